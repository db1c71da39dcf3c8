"""Durable instance records: atomic owner-only files, refusals of unsafe ids, unreadable files
set aside rather than acted on, tombstones pruned."""

from __future__ import annotations

import logging
import stat
import time
from pathlib import Path

import pytest

from node_daemon.errors import ConfigError
from node_daemon.records import TOMBSTONE_DAYS, Desired, InstanceRecord, RecordStore
from tests.support.node import sample_start


def test_round_trip_is_owner_only_and_leaves_no_temporary_files(tmp_path: Path):
    store = RecordStore(tmp_path / "instances")
    start = sample_start("abc", "img:1")
    store.put(InstanceRecord("abc", Desired.RUNNING, start=start.to_dict(), state="starting"))
    record = store.get("abc")
    assert record is not None
    assert record.desired is Desired.RUNNING and record.state == "starting"
    assert record.start_message() == start
    assert [p.name for p in (tmp_path / "instances").iterdir()] == ["abc.json"]
    assert stat.S_IMODE((tmp_path / "instances" / "abc.json").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "instances").stat().st_mode) == 0o700
    assert store.get("other") is None


@pytest.mark.parametrize("bad", ["../escape", "", "a/b", "x" * 64, "-lead", "a b",
                                 "Abc", "a_b", "a-b"])
def test_unsafe_instance_ids_are_refused(tmp_path: Path, bad: str):
    store = RecordStore(tmp_path)
    with pytest.raises(ConfigError, match="instance id"):
        store.put(InstanceRecord(bad, Desired.RUNNING))
    assert list(tmp_path.iterdir()) == []


def test_an_unreadable_record_is_set_aside(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    store = RecordStore(tmp_path)
    store.put(InstanceRecord("good", Desired.STOPPED))
    (tmp_path / "bad.json").write_text("{not json")
    with caplog.at_level(logging.ERROR, logger="dit4c.node.records"):
        assert [r.instance_id for r in store.all()] == ["good"]
    assert (tmp_path / "bad.corrupt").read_text() == "{not json"
    assert "unreadable record" in caplog.text


def test_old_reported_tombstones_are_pruned(tmp_path: Path):
    store = RecordStore(tmp_path)
    store.put(InstanceRecord("gone", Desired.DISCARDED, state="discarded", reported="discarded"))
    store.put(InstanceRecord("unsent", Desired.DISCARDED, state="discarded"))
    store.put(InstanceRecord("live", Desired.RUNNING))
    assert store.prune_tombstones() == 0
    later = time.time() + TOMBSTONE_DAYS * 86400 + 1
    assert store.prune_tombstones(now=later) == 1
    assert sorted(r.instance_id for r in store.all()) == ["live", "unsent"]
