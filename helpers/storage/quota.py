"""The user's storage quota, enforced where the tool writes.

``committed`` is what the store holds (a full count now and then, :meth:`Quota.counted`, plus
what this helper uploaded or deleted since); each file changed here and not yet uploaded adds
what it grew by (:meth:`Quota.grow`). A write that would take the sum beyond the limit fails
with ``EDQUOT`` in the tool, before anything is written: nothing is lost later.

What another instance of the same user writes is seen at the next full count (every
``RECOUNT_SECONDS``): two instances writing at once can each fill what was free at their last
count. The first count comes just after the mount serves (a launch does not wait for a listing
of the whole prefix); until then :attr:`Quota.known` is False and writes are checked against
what this helper has seen, the same allowance.
"""

from __future__ import annotations

import errno
import threading

from helpers.storage.fuse_wire import FuseError

RECOUNT_SECONDS = 60.0


class Quota:
    """Bytes used against ``limit`` (None: no limit)."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._committed = 0
        self._pending: dict[int, int] = {}
        """Per file being changed (by inode): bytes beyond its stored size."""
        self.known = False
        """Whether a full count came in (before it, ``used`` is only this helper's doing)."""

    @property
    def used(self) -> int:
        with self._lock:
            return self._committed + sum(self._pending.values())

    def counted(self, total: int) -> None:
        """A full count of the store: the new committed figure."""
        with self._lock:
            self._committed = total
            self.known = True

    def set_limit(self, limit: int | None) -> None:
        with self._lock:
            self.limit = limit

    def grow(self, ino: int, beyond_stored: int) -> None:
        """File ``ino`` is now ``beyond_stored`` bytes larger than its stored object (0 or
        less: not larger); EDQUOT if that would exceed the limit."""
        beyond = max(0, beyond_stored)
        with self._lock:
            before = self._pending.get(ino, 0)
            if (self.limit is not None and beyond > before
                    and self._committed + sum(self._pending.values()) - before + beyond
                    > self.limit):
                raise FuseError(errno.EDQUOT, "storage quota exceeded")
            if beyond:
                self._pending[ino] = beyond
            else:
                self._pending.pop(ino, None)

    def stored(self, ino: int, delta: int) -> None:
        """File ``ino`` was uploaded (its stored size changed by ``delta``) or deleted."""
        with self._lock:
            self._pending.pop(ino, None)
            self._committed = max(0, self._committed + delta)

    def adjust(self, delta: int) -> None:
        """The store's content changed by ``delta`` bytes (a delete, a server-side copy)."""
        with self._lock:
            self._committed = max(0, self._committed + delta)

    def forget(self, ino: int) -> None:
        """File ``ino``'s local changes were dropped (it was removed before upload)."""
        with self._lock:
            self._pending.pop(ino, None)
