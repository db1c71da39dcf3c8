"""The local copy of one file's bytes: a sparse cache file, filled from the store by chunks.

A :class:`Content` knows which version of the object its bytes are (``etag``), which chunks of
it are here, and whether the tool changed it since (``dirty``). Reads wait only for the chunks
they need: a large file is streamed from the first chunk a reader misses to its end (one GET,
so a sequential reader is always ahead), and a reader that jumps far beyond the stream gets
its chunk by a ranged GET of its own; a file opened for writing is fetched whole first.
:meth:`Content.upload` puts a changed file back whole, holding the file's write lock so
that no write lands half-way through an upload.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from helpers.storage.fuse_wire import FuseError
from helpers.storage.quota import Quota
from helpers.storage.store import ObjectInfo, Store, StoreError

log = logging.getLogger("dit4c.storage.content")

CHUNK = 8 << 20
READ_AHEAD = 4
"""Chunks fetched ahead of a reader (each one GET, in parallel)."""
MISSING, FETCHING, PRESENT, STREAMING = 0, 1, 2, 3
STREAM_PIECE = 1 << 20


def chunk_count(size: int) -> int:
    return (size + CHUNK - 1) // CHUNK


class Content:
    """One file's local bytes (see the module docstring). ``path`` is the cache file."""

    def __init__(self, ino: int, path: Path, pool: ThreadPoolExecutor) -> None:
        self.ino = ino
        self.path = path
        self._pool = pool
        self.cond = threading.Condition()
        self.write_lock = threading.RLock()
        """Held by writes, truncations and uploads of this file."""
        self.generation = 0
        """Changes when the bytes start over from another version: a late fetch is dropped."""
        self.etag: str | None = None
        self.remote_size = 0
        self.size = 0
        self.mtime_ns = time.time_ns()
        self.chunks = bytearray()
        self.dirty = False
        self.unlinked = False
        """Removed by the tool: never uploaded again."""
        self.handles = 0
        self.kernel_etag: str | None = None
        """The version the kernel's page cache holds (pages kept at open only if current)."""
        self.error: StoreError | None = None
        self.streamed: int | None = None
        """Where the running stream has got to (None: no stream)."""
        self.last_used = time.monotonic()
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)

    # -- state ---------------------------------------------------------------------------------

    @property
    def complete(self) -> bool:
        return all(c == PRESENT for c in self.chunks)

    @property
    def cached_bytes(self) -> int:
        return sum(min(CHUNK, self.size - i * CHUNK) for i, c in enumerate(self.chunks)
                   if c == PRESENT)

    def start_over(self, info: ObjectInfo | None) -> None:
        """Forget the local bytes: from now on they are ``info``'s object (None: a new, empty
        file that exists only here)."""
        with self.cond:
            self.generation += 1
            self.streamed = None
            self.etag = info.etag if info else None
            self.remote_size = info.size if info else 0
            self.size = self.remote_size
            self.mtime_ns = info.mtime_ns if info else time.time_ns()
            self.chunks = bytearray(chunk_count(self.size))
            self.dirty = info is None
            self.error = None
            os.ftruncate(self._fd, 0)
            os.ftruncate(self._fd, self.size)
            self.cond.notify_all()

    def drop_bytes(self) -> None:
        """Free the local copy of an unchanged file (fetched again when read)."""
        with self.cond:
            if self.dirty or self._fd < 0:
                return
            self.generation += 1
            self.chunks = bytearray(len(self.chunks))
            self.kernel_etag = None
            os.ftruncate(self._fd, 0)
            os.ftruncate(self._fd, self.size)

    def close(self) -> None:
        with self.cond:
            self.generation += 1
            self.chunks = bytearray(len(self.chunks))
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
            self.path.unlink(missing_ok=True)
            self.cond.notify_all()

    # -- fetching ------------------------------------------------------------------------------

    def ensure(self, store: Store, key_path: str, start: int, end: int) -> None:
        """Return once bytes ``[start, end)`` are here (fetching what is missing); raise
        FuseError if the store fails."""
        self.last_used = time.monotonic()
        with self.cond:
            if end <= start or self._fd < 0:
                return
            first, last = start // CHUNK, min(chunk_count(self.size), (end - 1) // CHUNK + 1)
            wanted = range(first, last)
            self._plan(store, key_path, wanted)
            while True:
                if all(self.chunks[i] == PRESENT for i in wanted if i < len(self.chunks)):
                    return
                if self.error is not None:
                    error, self.error = self.error, None
                    raise FuseError(error.code, str(error))
                for index in wanted:  # one that failed is asked for again
                    if index < len(self.chunks):
                        self._schedule(store, key_path, index)
                self.cond.wait(timeout=5.0)

    def _plan(self, store: Store, key_path: str, wanted: range) -> None:
        """(Under cond.) Get the chunks of ``wanted`` coming: a small file whole, now, by the
        caller's thread (no hand-over); a large one by a stream, or on their own when far
        beyond it."""
        if len(self.chunks) == 1 and self.chunks[0] == MISSING:
            self.chunks[0] = FETCHING
            generation = self.generation
            self.cond.release()
            try:
                self._fetch(store, key_path, 0, (0, self.remote_size), generation)
            finally:
                self.cond.acquire()
            return
        if self.streamed is None and any(self.chunks[i] == MISSING for i in wanted):
            self._stream(store, key_path, wanted.start)
        if self.streamed is not None:
            reach = self.streamed // CHUNK + READ_AHEAD
            for index in wanted:
                if self.chunks[index] == STREAMING and index > reach:
                    self.chunks[index] = MISSING
        for index in wanted:
            self._schedule(store, key_path, index)

    def ensure_all(self, store: Store, key_path: str) -> None:
        self.ensure(store, key_path, 0, self.size)

    def _stream(self, store: Store, key_path: str, first: int) -> None:
        """(Under cond.) Stream the object from chunk ``first`` to its end."""
        for index in range(first, len(self.chunks)):
            if self.chunks[index] == MISSING:
                self.chunks[index] = STREAMING
        self.streamed = first * CHUNK
        self._pool.submit(self._run_stream, store, key_path, first * CHUNK, self.generation)

    def _run_stream(self, store: Store, key_path: str, start: int, generation: int) -> None:
        position = start
        failure: StoreError | None = None
        try:
            for piece in store.stream(key_path, start, STREAM_PIECE):
                with self.cond:
                    if generation != self.generation or self._fd < 0:
                        return  # the file started over meanwhile
                    os.pwrite(self._fd, piece, position)
                    position += len(piece)
                    self.streamed = position
                    done = range(start // CHUNK, min(len(self.chunks),
                                                     position // CHUNK
                                                     + (position >= self.remote_size)))
                    for index in done:
                        if self.chunks[index] in (STREAMING, MISSING):
                            self.chunks[index] = PRESENT
                    self.cond.notify_all()
        except StoreError as exc:
            failure = exc
            log.warning("streaming %s failed at %d: %s", key_path, position, exc)
        finally:
            with self.cond:
                if generation == self.generation:
                    for index, state in enumerate(self.chunks):
                        if state == STREAMING:
                            self.chunks[index] = MISSING
                    if failure is not None:
                        self.error = failure
                    self.streamed = None
                    self.cond.notify_all()

    def _schedule(self, store: Store, key_path: str, index: int) -> None:
        """(Under cond.) Fetch chunk ``index`` unless it is here or on its way."""
        if self.chunks[index] != MISSING:
            return
        self.chunks[index] = FETCHING
        start = index * CHUNK
        end = min(self.remote_size, start + CHUNK)
        self._pool.submit(self._fetch, store, key_path, index, (start, end), self.generation)

    def _fetch(self, store: Store, key_path: str, index: int, span: tuple[int, int],
               generation: int) -> None:
        start, end = span
        try:
            data = store.read(key_path, start, end, whole=len(self.chunks) == 1)
        except StoreError as exc:
            with self.cond:
                if generation == self.generation:
                    self.chunks[index] = MISSING
                    self.error = exc
                    self.cond.notify_all()
            log.warning("fetching %s failed: %s", key_path, exc)
            return
        with self.cond:
            if generation != self.generation or self._fd < 0:
                return  # the file started over meanwhile
            os.pwrite(self._fd, data, start)
            self.chunks[index] = PRESENT
            self.cond.notify_all()

    # -- the tool's reads and writes -----------------------------------------------------------

    def read(self, store: Store, key_path: str, offset: int, size: int) -> bytes:
        end = min(self.size, offset + size)
        if offset >= end:
            return b""
        if not self.dirty:
            self.ensure(store, key_path, offset, end)
        return os.pread(self._fd, end - offset, offset)

    def write(self, quota: Quota, offset: int, data: memoryview) -> int:
        with self.write_lock:
            new_size = max(self.size, offset + len(data))
            quota.grow(self.ino, new_size - self.remote_size)
            written = os.pwrite(self._fd, data, offset)
            with self.cond:
                self._resized(max(self.size, offset + written))
                self.dirty = True
                self.mtime_ns = time.time_ns()
            return written

    def truncate(self, quota: Quota, size: int) -> None:
        with self.write_lock:
            quota.grow(self.ino, size - self.remote_size)
            os.ftruncate(self._fd, size)
            with self.cond:
                self._resized(size)
                self.dirty = True
                self.mtime_ns = time.time_ns()

    def _resized(self, size: int) -> None:
        """(Under cond, the bytes complete.) The file is now ``size`` bytes long."""
        count = chunk_count(size)
        if count > len(self.chunks):
            self.chunks.extend(bytes([PRESENT]) * (count - len(self.chunks)))
        else:
            del self.chunks[count:]
        self.size = size

    def upload(self, store: Store, key_path: str, quota: Quota) -> bool:
        """Put the file back if it changed here; True if it did. StoreError on failure (the
        file stays changed, to be tried again)."""
        with self.write_lock:
            if not self.dirty or self.unlinked or self._fd < 0:
                return False
            info = store.put(key_path, self.path)
            with self.cond:
                quota.stored(self.ino, info.size - self.remote_size)
                self.etag = info.etag
                self.remote_size = info.size
                self.mtime_ns = info.mtime_ns
                self.kernel_etag = info.etag  # the kernel's pages are what it wrote to us
                self.dirty = False
            return True

    def opened(self) -> None:
        with self.cond:
            self.handles += 1
            self.last_used = time.monotonic()

    def closed(self) -> None:
        with self.cond:
            self.handles = max(0, self.handles - 1)
            self.last_used = time.monotonic()

    def evictable(self) -> bool:
        return self.handles == 0 and not self.dirty and self.cached_bytes > 0


def errno_of(exc: BaseException) -> int:
    if isinstance(exc, FuseError):
        return exc.errno
    if isinstance(exc, StoreError):
        return exc.code
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    return errno.EIO
