"""The journal's files: records read back in order; a cut or damaged file is read up to its last
good record and the rest is kept aside, never dropped."""

from __future__ import annotations

import threading

import pytest

from infra.local.errors import JournalError
from infra.local.journal import FILE_HEADER, Journal


def written(tmp_path, *segments: list[bytes]) -> Journal:
    journal = Journal(tmp_path / "journal")
    for number, payloads in enumerate(segments):
        if number == 0:
            journal.open(0)
        else:
            journal.rotate()
        for payload in payloads:
            journal.sync(journal.append(payload))
    journal.close()
    return journal


def test_records_come_back_in_order_across_segments(tmp_path):
    journal = written(tmp_path, [b"a", b"b" * 70000], [], [b"c"])
    replay = journal.read(0)
    assert replay.records == [b"a", b"b" * 70000, b"c"]
    assert replay.damage is None
    assert journal.read(2).records == [b"c"]
    assert journal.segments() == [0, 1, 2]


def test_a_record_cut_short_is_where_reading_stops_and_the_rest_is_kept_aside(tmp_path):
    journal = written(tmp_path, [b"first", b"second"], [b"later"])
    segment = journal.path(0)
    data = segment.read_bytes()
    segment.write_bytes(data[:-3])  # the last record of segment 0 lost its end
    cut_at = len(data) - (10 + len(b"second"))

    replay = journal.read(0)
    assert replay.records == [b"first"]
    assert replay.damage is not None
    assert (replay.damage.path, replay.damage.offset) == (segment, cut_at)
    assert replay.damage.reason == "a record is cut short"

    damage = journal.set_aside(replay.damage)
    kept = sorted(p.name for p in damage.kept)
    assert kept[0].startswith("00000000.log.damaged-")
    assert kept[1].startswith("00000001.log.damaged-")
    assert segment.read_bytes() == data[:cut_at]
    assert damage.kept[0].read_bytes() == data[cut_at:-3]
    assert journal.segments() == [0]
    assert journal.read(0).records == [b"first"]
    assert f"{segment} is damaged at byte {cut_at} (a record is cut short)" in str(damage)
    assert str(damage.kept[1]) in str(damage)


@pytest.mark.parametrize(("damage", "reason"), [
    (lambda data, at: data[:at + 12] + b"X" + data[at + 13:], "a record fails its checksum"),
    (lambda data, at: data[:at] + b"\0" * (len(data) - at), "not a record header"),
])
def test_a_damaged_record_in_the_middle_stops_reading_there(tmp_path, damage, reason):
    journal = written(tmp_path, [b"one", b"two!", b"three"])
    segment = journal.path(0)
    data = segment.read_bytes()
    second = len(FILE_HEADER) + 10 + 3
    segment.write_bytes(damage(data, second))
    replay = journal.read(0)
    assert replay.records == [b"one"]
    assert replay.damage is not None
    assert (replay.damage.offset, replay.damage.reason) == (second, reason)


def test_a_missing_segment_is_damage_not_a_gap_to_skip(tmp_path):
    journal = written(tmp_path, [b"a"], [b"b"], [b"c"])
    journal.path(1).unlink()
    replay = journal.read(0)
    assert replay.records == [b"a"]
    assert replay.damage is not None
    assert replay.damage.path == journal.path(2)
    assert "segment 00000001 before it is missing" in replay.damage.reason


def test_a_file_that_is_no_segment_is_damage(tmp_path):
    journal = written(tmp_path, [b"a"])
    journal.path(0).write_bytes(b"something else entirely")
    replay = journal.read(0)
    assert replay.records == []
    assert replay.damage is not None
    assert replay.damage.offset == 0
    damage = journal.set_aside(replay.damage)
    assert journal.segments() == []
    assert damage.kept[0].read_bytes() == b"something else entirely"


def test_removing_old_segments_keeps_the_newer_ones(tmp_path):
    journal = written(tmp_path, [b"a"], [b"b"], [b"c"])
    journal.remove_before(2)
    assert journal.segments() == [2]


def test_syncs_from_many_threads_cover_every_record(tmp_path):
    journal = Journal(tmp_path / "journal")
    journal.open(0)
    lock = threading.Lock()

    def write(n: int) -> None:
        for i in range(50):
            with lock:  # the caller orders appends
                sequence = journal.append(f"{n}-{i}".encode())
            journal.sync(sequence)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    journal.close()
    assert sorted(journal.read(0).records) == sorted(
        f"{n}-{i}".encode() for n in range(4) for i in range(50))


def test_appending_to_a_closed_journal_is_an_error(tmp_path):
    journal = written(tmp_path, [b"a"])
    with pytest.raises(JournalError, match="not open"):
        journal.append(b"b")
    with pytest.raises(ValueError, match="1 to"):
        Journal(tmp_path).append(b"")
