"""Durable instance records: atomic owner-only files, the first release's files still read,
refusals of unsafe ids, unreadable files set aside rather than acted on, tombstones pruned."""

from __future__ import annotations

import json
import logging
import stat
import time
from pathlib import Path

import pytest

from node_daemon.errors import ConfigError
from node_daemon.records import TOMBSTONE_DAYS, Desired, InstanceRecord, RecordStore
from protocol.messages import RegistryAccess, StartInstance, StorageAccess
from tests.support.node import sample_start

FIRST_RELEASE_RECORD = (
    '{"desired": "running", "instance_id": "0123456789abcdef", "progress": {}, "reason": null, '
    '"reported": "running", "save_image": null, "saved_image": null, "start": {"cpu": 0.5, '
    '"env": {"A": "b"}, "hostname": "0123456789abcdef.localhost", '
    '"id": "5f0c6b1e2d3a4c5b8e9f0a1b2c3d4e5f", "image": "registry.test/tool:1", '
    '"instance_id": "0123456789abcdef", "memory_mb": 128, "oauth": {"authorize_url": '
    '"http://localhost:8000/oauth/authorize", "client_id": "client-0123456789abcdef", '
    '"client_secret": "oauth-secret", "jwks_url": '
    '"http://host.docker.internal:9/.well-known/jwks.json", "token_url": '
    '"http://host.docker.internal:9/oauth/token"}, "pids_limit": 512, "port": 8080, '
    '"registry": {"registry": "registry.test", "token": "reg-token"}, "router_urls": '
    '["ws://host.docker.internal:9/.dit4c/tunnel"], "sent_at": "2026-01-02T03:04:05.678Z", '
    '"storage": {"bucket": "b", "credentials": {"k": "v"}, "endpoint_url": null, "kind": "s3", '
    '"prefix": "users/alice/"}, "tunnel_token": "tunnel-secret", "type": "start_instance", '
    '"url": "http://0123456789abcdef.localhost:8080", "v": 1}, "state": "running", '
    '"updated_at": 1796519708.4573953}')
"""A running instance's record, byte for byte as the first release (its start a dict) wrote it."""


def test_round_trip_is_owner_only_and_leaves_no_temporary_files(tmp_path: Path):
    store = RecordStore(tmp_path / "instances")
    start = sample_start("abc", "img:1")
    store.put(InstanceRecord("abc", Desired.RUNNING, start=start, state="starting"))
    record = store.get("abc")
    assert record is not None
    assert record.desired is Desired.RUNNING and record.state == "starting"
    assert record.start == start
    assert [p.name for p in (tmp_path / "instances").iterdir()] == ["abc.json"]
    assert stat.S_IMODE((tmp_path / "instances" / "abc.json").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "instances").stat().st_mode) == 0o700
    assert store.get("other") is None


def test_a_record_of_the_first_release_is_read_and_written_back_the_same(tmp_path: Path):
    """A node upgraded in place adopts the pods its records describe."""
    (tmp_path / "0123456789abcdef.json").write_text(FIRST_RELEASE_RECORD)
    store = RecordStore(tmp_path)
    (record,) = store.all()
    assert (record.instance_id, record.desired, record.state, record.reported) == (
        "0123456789abcdef", Desired.RUNNING, "running", "running")
    assert isinstance(record.start, StartInstance)
    assert (record.start.tunnel_token, record.start.oauth.client_secret) == (
        "tunnel-secret", "oauth-secret")
    assert record.start.registry == RegistryAccess(registry="registry.test", token="reg-token")
    assert record.start.storage == StorageAccess(kind="s3", bucket="b", prefix="users/alice/",
                                                 credentials={"k": "v"})
    assert (record.start.env, record.start.cpu, record.start.memory_mb) == ({"A": "b"}, 0.5, 128)
    # Written back with nothing lost; fields added since come with their defaults.
    written = json.loads(record.to_json())
    original = json.loads(FIRST_RELEASE_RECORD)
    original["start"]["storage"].update(region="us-east-1", quota_bytes=None)
    assert written == original


def test_a_record_whose_start_is_no_start_command_is_set_aside(tmp_path: Path):
    bad = FIRST_RELEASE_RECORD.replace('"type": "start_instance"', '"type": "stop_instance"')
    (tmp_path / "0123456789abcdef.json").write_text(bad)
    assert RecordStore(tmp_path).all() == []
    assert (tmp_path / "0123456789abcdef.corrupt").read_text() == bad


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
