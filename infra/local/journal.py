"""An append-only journal on disk: numbered segment files of checksummed records.

The local stack writes one record per acknowledged change of its AWS state
(:mod:`infra.local.durable`) and replays them over the last snapshot after a crash. This module
knows only bytes: how records are framed, made durable, read back, and what a damaged file is.

Layout under the journal directory::

    00000007.log     one segment: a file header, then records
    00000008.log     the segment being appended to (the highest number)

A segment starts with :data:`FILE_HEADER`; each record is ``magic (2 bytes) | payload length
(4, big-endian) | CRC-32 of the payload (4) | payload``. The magic and a non-zero length make a
zero-filled tail (what a file system may leave after a power cut) a damaged record rather than
an empty one.

Appends are written with one ``write(2)`` each, so a process killed at any moment leaves whole
records behind (the kernel keeps what was written); :meth:`Journal.sync` makes them survive a
power cut too, with ``fdatasync`` (unless the journal is made with ``sync=False``: then the
kernel writes them back within its own delay, about 30 s). Syncs are grouped: a caller waiting
for record *n* returns at once if another caller's sync already covered it.

Reading stops at the first record that is cut short or fails its checksum: everything before it
is good, that record and everything after it (in that segment and any later one) may not be.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import struct
import threading
import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from infra.local.errors import JournalError
from infra.local.files import aside_name, sync_directory, write_synced

log = logging.getLogger("dit4c.local.journal")

FILE_HEADER: Final = b"DIT4C-JOURNAL 1\n"
_RECORD: Final = struct.Struct(">2sII")
_MAGIC: Final = b"\xd1\x7c"
MAX_RECORD: Final = 1 << 30
"""A length above this is damage, not a record (S3 bodies are the largest payloads)."""
_SEGMENT: Final = re.compile(r"^(\d{8})\.log$")


@dataclass(frozen=True)
class Damage:
    """Where reading stopped, and why; ``kept`` is where the unreadable rest was moved."""

    path: Path
    offset: int
    reason: str
    kept: list[Path] = field(default_factory=list)

    def __str__(self) -> str:
        kept = ", ".join(str(p) for p in self.kept) or "nothing"
        return (f"{self.path} is damaged at byte {self.offset} ({self.reason}): the records "
                f"before it are used, the rest is kept aside in {kept}")


@dataclass
class Replay:
    """The good records of every segment from ``start`` on, in order, and the damage found."""

    records: list[bytes] = field(default_factory=list)
    segments: list[Path] = field(default_factory=list)
    damage: Damage | None = None


class Journal:
    """The segments under ``directory``; see the module docstring.

    :meth:`read` and :meth:`set_aside` before :meth:`open`; then :meth:`append` (the caller
    orders appends: records are replayed in the order they were appended), :meth:`sync`,
    :meth:`rotate` and :meth:`remove_before` from any thread.
    """

    def __init__(self, directory: Path, sync: bool = True) -> None:
        self.directory = directory
        self.syncs = sync
        # Always taken in this order: _sync_lock, then _lock.
        self._sync_lock = threading.Lock()
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._segment = -1
        self._size = 0
        self._written = 0  # sequence number of the last record written
        self._synced = 0  # ... and of the last one known to be on disk

    # -- reading -----------------------------------------------------------------------------

    def segments(self) -> list[int]:
        """The numbers of the segments on disk, lowest first."""
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        return sorted(int(m.group(1)) for name in names if (m := _SEGMENT.match(name)))

    def path(self, segment: int) -> Path:
        return self.directory / f"{segment:08d}.log"

    def read(self, start: int) -> Replay:
        """Every good record of the segments numbered ``start`` and above, in order.

        A missing segment in the run (``start`` absent while later ones exist, or a gap) is
        damage too: the records after it were written over state that cannot be rebuilt.
        """
        replay = Replay()
        numbers = [n for n in self.segments() if n >= start]
        expected = start
        for number in numbers:
            path = self.path(number)
            if number != expected:
                replay.damage = Damage(path, 0, f"segment {expected:08d} before it is missing")
                return replay
            expected += 1
            replay.segments.append(path)
            data = path.read_bytes()
            records, offset, reason = _parse(data)
            replay.records.extend(records)
            if reason is not None:
                replay.damage = Damage(path, offset, reason)
                return replay
        return replay

    def set_aside(self, damage: Damage) -> Damage:
        """Move the unreadable part named by ``damage`` (the rest of its segment and every later
        segment) out of the journal, next to it; returns ``damage`` with where it went."""
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        kept: list[Path] = []
        damaged_number = int(damage.path.name[:8])
        data = damage.path.read_bytes()
        aside = aside_name(damage.path, stamp)
        if damage.offset > 0:
            write_synced(aside, data[damage.offset:])
            with open(damage.path, "r+b") as handle:
                handle.truncate(damage.offset)
                os.fsync(handle.fileno())
        else:
            os.replace(damage.path, aside)
        kept.append(aside)
        for number in self.segments():
            if number > damaged_number:
                later = self.path(number)
                moved = aside_name(later, stamp)
                os.replace(later, moved)
                kept.append(moved)
        sync_directory(self.directory)
        return Damage(damage.path, damage.offset, damage.reason, kept)

    # -- writing -----------------------------------------------------------------------------

    def open(self, segment: int) -> None:
        """Start appending to a new, empty segment ``segment``."""
        with self._sync_lock, self._lock:
            self._open(segment)

    def _open(self, segment: int) -> None:
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self.path(segment), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND,
                         0o600)
            os.write(fd, FILE_HEADER)
            os.fdatasync(fd)
            sync_directory(self.directory)
        except OSError as exc:
            raise JournalError(f"cannot start journal segment {self.path(segment)}: {exc}") \
                from exc
        self._fd, self._segment, self._size = fd, segment, len(FILE_HEADER)

    @property
    def segment(self) -> int:
        """The segment being appended to."""
        return self._segment

    @property
    def size(self) -> int:
        """Bytes in the segment being appended to."""
        return self._size

    def append(self, payload: bytes) -> int:
        """Write one record (not yet synced); returns its sequence number for :meth:`sync`."""
        if not payload or len(payload) > MAX_RECORD:
            raise ValueError(f"a record holds 1 to {MAX_RECORD} bytes, not {len(payload)}")
        record = _RECORD.pack(_MAGIC, len(payload), zlib.crc32(payload)) + payload
        with self._lock:
            if self._fd is None:
                raise JournalError("the journal is not open")
            try:
                written = os.write(self._fd, record)
            except OSError as exc:
                raise JournalError(f"cannot append to {self.path(self._segment)}: {exc}") \
                    from exc
            if written != len(record):
                # A short write (disk full) leaves a torn record: reading stops there.
                raise JournalError(f"{self.path(self._segment)}: short write ({written} of "
                                   f"{len(record)} bytes); is the disk full?")
            self._size += written
            self._written += 1
            return self._written

    def sync(self, sequence: int) -> None:
        """Return once record ``sequence`` and every record before it is on disk; at once for
        a journal made with ``sync=False`` (the kernel writes it back in its own time)."""
        if not self.syncs:
            return
        with self._sync_lock:
            if self._synced >= sequence:
                return  # another caller's sync covered it
            with self._lock:
                fd, target = self._fd, self._written
            if fd is None:
                raise JournalError("the journal is closed")
            try:
                os.fdatasync(fd)
            except OSError as exc:
                raise JournalError(f"cannot sync {self.path(self._segment)}: {exc}") from exc
            self._synced = target

    def rotate(self) -> int:
        """Close the current segment (synced) and start the next; returns its number."""
        with self._sync_lock, self._lock:
            self._close()
            self._open(self._segment + 1)
            return self._segment

    def remove_before(self, segment: int) -> None:
        """Delete the segments numbered below ``segment`` (a snapshot holds what they held)."""
        for number in self.segments():
            if number < segment:
                with contextlib.suppress(FileNotFoundError):
                    self.path(number).unlink()

    def close(self) -> None:
        with self._sync_lock, self._lock:
            self._close()

    def _close(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.fdatasync(fd)
        finally:
            os.close(fd)
        self._synced = self._written


def _parse(data: bytes) -> tuple[list[bytes], int, str | None]:
    """The good records of one segment's bytes, where reading stopped, and why (None: the end)."""
    if not data.startswith(FILE_HEADER):
        if FILE_HEADER.startswith(data):
            return [], 0, "the file header is cut short"
        return [], 0, "not a journal segment (unknown file header)"
    records: list[bytes] = []
    offset = len(FILE_HEADER)
    while offset < len(data):
        found = _record_at(data, offset)
        if isinstance(found, str):
            return records, offset, found
        records.append(found)
        offset += _RECORD.size + len(found)
    return records, offset, None


def _record_at(data: bytes, offset: int) -> bytes | str:
    """The payload of the record at ``offset``, or why there is none."""
    if len(data) - offset < _RECORD.size:
        return "a record is cut short"
    magic, length, crc = _RECORD.unpack_from(data, offset)
    if magic != _MAGIC or not 0 < length <= MAX_RECORD:
        return "not a record header"
    start = offset + _RECORD.size
    if start + length > len(data):
        return "a record is cut short"
    payload = data[start:start + length]
    if zlib.crc32(payload) != crc:
        return "a record fails its checksum"
    return payload
