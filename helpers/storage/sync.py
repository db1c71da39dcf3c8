"""Two-way mirroring between a local folder and a remote store of objects (one prefix).

The remote side is a :class:`Store` seam (S3 in production, anything in tests). The local
folder is the truth once the initial download is done: what the tool writes is uploaded, what
it removes is deleted remotely. Before the initial download finished nothing remote is deleted.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

log = logging.getLogger("dit4c.storage")


class StorageError(Exception):
    """Root exception of the storage helper."""


class Store(Protocol):
    """Objects keyed by a path relative to the user's prefix (``a/b.txt``, no leading ``/``)."""

    def list_keys(self) -> list[str]:
        """Every object's relative key (directory markers ending in ``/`` excluded)."""

    def download(self, key: str, path: Path) -> None:
        """Write the object's bytes to ``path`` (its folder exists)."""

    def upload(self, path: Path, key: str) -> None: ...

    def delete(self, key: str) -> None: ...


Stamp = tuple[int, int]
"""(size, mtime in ns): a file whose stamp is unchanged since the last sync is not uploaded."""


def stamp(path: Path) -> Stamp:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


class Mirror:
    """Keeps ``root`` and ``store`` equal: :meth:`download_all` once, then :meth:`sync` often.

    ``synced`` maps each relative key to the stamp of the local file when it was last known
    equal to its object. Files are made readable and writable by anyone (the tool may run as
    any uid); symlinks and other non-regular files are never uploaded.
    """

    def __init__(self, root: Path, store: Store) -> None:
        self.root = root
        self.store = store
        self.synced: dict[str, Stamp] = {}
        self.ready = False

    def local_path(self, key: str) -> Path:
        """Where ``key`` lives under root; a key that would escape it is refused."""
        parts = key.split("/")
        if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise StorageError(f"object key {key!r} is not a safe relative path")
        return self.root.joinpath(*parts)

    def download_all(self) -> int:
        """Fetch every object into root (overwriting); return how many. Unsafe keys are
        skipped with a warning."""
        count = 0
        for key in self.store.list_keys():
            try:
                path = self.local_path(key)
            except StorageError as exc:
                log.warning("skipped: %s", exc)
                continue
            path.parent.mkdir(mode=0o777, parents=True, exist_ok=True)
            self.store.download(key, path)
            os.chmod(path, 0o666)  # noqa: S103  the tool may run as any uid
            self.synced[key] = stamp(path)
            count += 1
        self.ready = True
        return count

    def local_files(self) -> Iterator[str]:
        for folder, dirs, files in os.walk(self.root):
            dirs.sort()
            for name in sorted(files):
                path = Path(folder, name)
                if path.is_file() and not path.is_symlink():
                    yield path.relative_to(self.root).as_posix()

    def sync(self) -> tuple[int, int]:
        """Upload new and changed files, delete objects of removed files; return
        (uploaded, deleted). Does nothing before :meth:`download_all` finished."""
        if not self.ready:
            return 0, 0
        uploaded = deleted = 0
        present = set()
        for key in self.local_files():
            present.add(key)
            path = self.root / key
            try:
                now = stamp(path)
            except FileNotFoundError:  # removed while we looked
                present.discard(key)
                continue
            if self.synced.get(key) != now:
                self.store.upload(path, key)
                self.synced[key] = now
                uploaded += 1
        for key in sorted(set(self.synced) - present):
            self.store.delete(key)
            del self.synced[key]
            deleted += 1
        return uploaded, deleted
