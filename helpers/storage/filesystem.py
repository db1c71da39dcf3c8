"""The user's storage as a file system: the :class:`~helpers.storage.fuse_server.Operations`
that :class:`~helpers.storage.fuse_server.FuseServer` serves at ``/mnt/storage``.

What users get (docs/helpers.md, Storage helper, says it for them):

- **Files and folders** are the objects under the user's prefix; a folder is a key prefix (and
  a marker object ``folder/``, so that an empty folder persists). Every file shows as
  ``rw-rw-rw-`` and every folder as ``rwxrwxrwx``, owned by whoever looks; ``chmod``,
  ``chown`` and setting times are accepted and change nothing. A file's time is when it was
  last stored.
- **Live**: the folders in use are listed again every ``LIST_SECONDS`` (:meth:`StorageFS.watch`)
  and what changed is taken out of the kernel's caches at once; so what another instance stored
  or removed shows here within that and one listing's time. The kernel may keep names and
  attributes in watched folders for ``ENTRY_SECONDS`` (so reading a file again costs one open),
  elsewhere for ``SHORT_SECONDS``; an unwatched folder's listing older than
  ``LIST_MAX_SECONDS`` is fetched again before it is used. An open checks that the local copy
  is still the stored version.
- **Writes** go to a local copy; ``close`` (and ``fsync``) stores the whole file before it
  returns, so a successful ``close`` means the file is in S3, and a failed store is the
  ``close``'s error. The last ``close`` wins when two instances write the same file.
- **Not there**: symbolic and hard links, devices, FIFOs (EPERM); extended attributes; locks
  across instances (``flock``/``fcntl`` locks work within one instance only); renaming is a
  copy then a delete, folder by folder for a folder (not atomic).
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import os
import stat
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import ParamSpec, Protocol, TypeVar

from helpers.storage.content import Content, errno_of
from helpers.storage.fuse_wire import (
    RENAME_EXCHANGE,
    RENAME_NOREPLACE,
    ROOT_ID,
    Attr,
    Context,
    Entry,
    FuseError,
    SetAttr,
    StatFs,
)
from helpers.storage.quota import Quota
from helpers.storage.store import Listing, ObjectInfo, Store, StoreError, safe_name

log = logging.getLogger("dit4c.storage.fs")
P = ParamSpec("P")
T = TypeVar("T")

LIST_SECONDS = 2.5
WATCH_SECONDS = 60.0
"""A folder used within this is watched (listed every LIST_SECONDS, changes pushed to the
kernel); at most WATCHED folders, the most recently used."""
WATCHED = 64
ENTRY_SECONDS = 30.0
"""How long the kernel may keep a name or attributes of a watched folder (< WATCH_SECONDS, so
they expire before the folder stops being watched for lack of use)."""
SHORT_SECONDS = 1.0
LIST_MAX_SECONDS = 5.0
"""An unwatched folder's listing older than this is fetched again before it is used."""
FILE_MODE = stat.S_IFREG | 0o666
DIR_MODE = stat.S_IFDIR | 0o777
CACHE_LIMIT = 2 << 30
"""Bytes of unchanged, closed files kept locally before the least recently used go."""
PLACEHOLDER_INO = 1 << 62
"""READDIR (without attributes) names entries the kernel has not looked up by this base plus
a hash: never 0, which some programs skip."""


@dataclass
class Node:
    ino: int
    path: str
    """Relative to the prefix; "" is the root."""
    is_dir: bool
    lookups: int = 0
    info: ObjectInfo | None = None
    """The stored object as last listed (files)."""
    content: Content | None = None


@dataclass
class Folder:
    listing: Listing | None = None
    fetched: float = 0.0
    used: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)


class Notifier(Protocol):
    """Where the file system tells the kernel to drop what it cached (the FUSE server)."""

    def notify_inval_entry(self, parent: int, name: bytes) -> None: ...
    def notify_inval_inode(self, ino: int) -> None: ...


@dataclass
class Handle:
    node: Node
    writable: bool


class Failure(Exception):
    """What the status file reports: a store failure the tool saw."""


def _join(folder: str, name: str) -> str:
    return f"{folder}/{name}" if folder else name


def _split(path: str) -> tuple[str, str]:
    folder, _, name = path.rpartition("/")
    return folder, name


def _name(raw: bytes) -> str:
    try:
        name = raw.decode()
    except UnicodeDecodeError:
        raise FuseError(errno.EINVAL, "names must be UTF-8 (S3 keys are)") from None
    if not safe_name(name):
        raise FuseError(errno.ENAMETOOLONG if len(raw) > 255 else errno.EINVAL)
    return name


class StorageFS:
    """The file system over ``store`` (see the module docstring); local copies in
    ``cache_dir``; writes held to ``quota``."""

    def __init__(self, store: Store, quota: Quota, cache_dir: Path) -> None:
        self.store = store
        self.quota = quota
        self.cache_dir = cache_dir
        self._lock = threading.RLock()
        self._nodes: dict[int, Node] = {ROOT_ID: Node(ROOT_ID, "", True, lookups=1)}
        self._paths: dict[str, int] = {"": ROOT_ID}
        self._folders: dict[str, Folder] = {}
        self._handles: dict[int, Handle] = {}
        self._dir_handles: dict[int, list[tuple[str, bool]]] = {}
        self._next_ino = itertools.count(ROOT_ID + 1)
        self._next_fh = itertools.count(1)
        self._fetchers = ThreadPoolExecutor(max_workers=8, thread_name_prefix="dit4c-fetch")
        self._uploads = ThreadPoolExecutor(max_workers=2, thread_name_prefix="dit4c-upload")
        self._watched: set[str] = set()
        self.notifier: Notifier | None = None
        self.failures: dict[str, str] = {}
        """Files whose last store failed (path -> error), for the status report."""
        self.last_error: str | None = None
        self.last_error_at = 0.0

    def failed(self, message: str) -> None:
        """Note a failure the tool saw (the status file shows it for a while)."""
        self.last_error = message
        self.last_error_at = time.monotonic()

    # -- listings ------------------------------------------------------------------------------

    def listing(self, folder: str, *, fresh: bool = False) -> Listing:
        """The folder's listing: the cached one of a watched folder, or one at most
        LIST_MAX_SECONDS old (``fresh``: fetched now). Counts as a use of the folder."""
        with self._lock:
            entry = self._folders.setdefault(folder, Folder())
            entry.used = time.monotonic()
            age = entry.used - entry.fetched
            if entry.listing is not None and not fresh and (
                    folder in self._watched or age <= LIST_MAX_SECONDS):
                return entry.listing
        return self._refresh(folder, entry)[1]

    def _refresh(self, folder: str, entry: Folder) -> tuple[Listing | None, Listing]:
        """(the listing before, the one fetched now)."""
        started = time.monotonic()
        with entry.lock:
            before = entry.listing
            if before is not None and entry.fetched >= started:
                return before, before  # fetched by another caller while we waited
            listing = self._call(self.store.list_dir, folder)
            with self._lock:
                entry.listing, entry.fetched = listing, started
            return before, listing

    def _ttl(self, folder: str) -> float:
        return ENTRY_SECONDS if folder in self._watched else SHORT_SECONDS

    def watch(self, stop: threading.Event) -> None:
        """Until ``stop``: every LIST_SECONDS, list the watched folders again and take what
        changed out of the kernel's caches (names gone, files of another version). Runs in its
        own thread, holding no lock while it notifies (the kernel may be waiting for one of our
        answers in the same folder)."""
        while not stop.wait(LIST_SECONDS):
            now = time.monotonic()
            with self._lock:
                recent = sorted((f for f, e in self._folders.items()
                                 if e.listing is not None and now - e.used < WATCH_SECONDS),
                                key=lambda f: self._folders[f].used, reverse=True)[:WATCHED]
                dropped = self._watched - set(recent)
                self._watched = set(recent)
                entries = {f: self._folders[f] for f in recent}
                stale = {f: self._folders[f].listing for f in dropped if f in self._folders}
            for folder, listing in stale.items():
                # Its names may still be cached for ENTRY_SECONDS: forget them now.
                if listing is not None:
                    self._changed(folder, listing, Listing())
            for folder, entry in entries.items():
                try:
                    before, after = self._refresh(folder, entry)
                except FuseError as exc:
                    log.warning("listing %r failed: %s", folder, exc)
                    continue
                if before is not None and before is not after:
                    self._changed(folder, before, after)

    def _changed(self, folder: str, before: Listing, after: Listing) -> None:
        """Tell the kernel what differs between two listings of ``folder``."""
        notifier = self.notifier
        if notifier is None:
            return
        with self._lock:
            parent = self._paths.get(folder)
            gone, replaced = [], []
            for name in (*before.files, *before.dirs):
                is_dir = name in before.dirs
                ino = self._paths.get(_join(folder, name))
                node = self._nodes.get(ino) if ino is not None else None
                if node is not None and node.content is not None and (
                        node.content.dirty or node.content.etag is None):
                    continue  # changed here: ours is the newer
                if (name in after.dirs) != is_dir or (
                        name not in after.dirs and name not in after.files):
                    gone.append(name)
                elif not is_dir and ino is not None and \
                        after.files[name].etag != before.files[name].etag:
                    replaced.append(ino)
        if parent is not None:
            for name in gone:
                notifier.notify_inval_entry(parent, name.encode())
        for ino in replaced:
            notifier.notify_inval_inode(ino)

    def _call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``fn`` of the store; its failure, for the tool, as a FuseError."""
        try:
            result = fn(*args, **kwargs)
        except StoreError as exc:
            self.failed(str(exc))
            raise FuseError(exc.code, str(exc)) from exc
        return result

    def _local(self, path: str) -> Node | None:
        """A file made here and not stored yet (the store knows nothing of it)."""
        ino = self._paths.get(path)
        node = self._nodes.get(ino) if ino is not None else None
        if node is not None and not node.is_dir and node.content is not None \
                and node.content.etag is None and not node.content.unlinked:
            return node
        return None

    def _kind(self, folder: str, name: str) -> tuple[bool, ObjectInfo | None] | None:
        """(is a folder, stored object) for ``name`` in ``folder``, or None if absent."""
        listing = self.listing(folder)
        if name in listing.dirs:
            return True, None
        if name in listing.files:
            return False, listing.files[name]
        with self._lock:
            if self._local(_join(folder, name)) is not None:
                return False, None
        return None

    def _node(self, path: str, is_dir: bool, info: ObjectInfo | None) -> Node:
        """(Under _lock.) The node of ``path``: the known one if of the same kind, else new."""
        ino = self._paths.get(path)
        node = self._nodes.get(ino) if ino is not None else None
        if node is None or node.is_dir != is_dir:
            node = Node(next(self._next_ino), path, is_dir)
            self._nodes[node.ino] = node
            self._paths[path] = node.ino
        if info is not None:
            node.info = info
        return node

    def _get(self, ino: int) -> Node:
        with self._lock:
            node = self._nodes.get(ino)
        if node is None:
            raise FuseError(errno.ENOENT, f"inode {ino} is not known")
        return node

    def _folder_node(self, ino: int) -> Node:
        node = self._get(ino)
        if not node.is_dir:
            raise FuseError(errno.ENOTDIR)
        return node

    # -- attributes ----------------------------------------------------------------------------

    def _attr(self, node: Node, ctx: Context) -> Attr:
        if node.is_dir:
            return Attr(node.ino, DIR_MODE, 0, 0, ctx.uid, ctx.gid, nlink=2)
        content = node.content
        if content is not None and (content.dirty or content.etag is None or node.info is None
                                    or content.etag == node.info.etag):
            return Attr(node.ino, FILE_MODE, content.size, content.mtime_ns, ctx.uid, ctx.gid)
        info = node.info or ObjectInfo(0, "", 0)
        return Attr(node.ino, FILE_MODE, info.size, info.mtime_ns, ctx.uid, ctx.gid)

    def _entry(self, node: Node, ctx: Context) -> Entry:
        ttl = self._ttl(_split(node.path)[0]) if node.path else SHORT_SECONDS
        return Entry(self._attr(node, ctx), ttl, ttl)

    # -- Operations: names ---------------------------------------------------------------------

    def lookup(self, parent: int, name: bytes, ctx: Context) -> Entry:
        folder = self._folder_node(parent)
        text = _name(name)
        found = self._kind(folder.path, text)
        if found is None:
            raise FuseError(errno.ENOENT)
        with self._lock:
            node = self._node(_join(folder.path, text), *found)
            node.lookups += 1
            return self._entry(node, ctx)

    def remember(self, ino: int) -> None:
        with self._lock:
            node = self._nodes.get(ino)
            if node is not None:
                node.lookups += 1

    def forget(self, ino: int, count: int) -> None:
        with self._lock:
            node = self._nodes.get(ino)
            if node is None or ino == ROOT_ID:
                return
            node.lookups -= count
            if node.lookups <= 0:
                self._drop(node)

    def _drop(self, node: Node) -> None:
        """(Under _lock.) Forget a node nobody refers to any more (kept while open or
        changed)."""
        content = node.content
        if content is not None and (content.handles or content.dirty):
            return
        self._nodes.pop(node.ino, None)
        if self._paths.get(node.path) == node.ino:
            del self._paths[node.path]
        if content is not None:
            content.close()

    def getattr(self, ino: int, ctx: Context) -> tuple[Attr, float]:
        node = self._get(ino)
        if not node.is_dir and not (node.content and (node.content.dirty
                                                      or node.content.etag is None)):
            folder, name = _split(node.path)
            info = self.listing(folder).files.get(name)
            if info is not None:
                node.info = info
            elif not (node.content and node.content.handles):
                raise FuseError(errno.ENOENT)
        return self._attr(node, ctx), self._ttl(_split(node.path)[0])

    def setattr(self, ino: int, change: SetAttr, ctx: Context) -> tuple[Attr, float]:
        node = self._get(ino)
        if change.size is not None:
            if node.is_dir:
                raise FuseError(errno.EISDIR)
            content = self._content(node, writable=True, truncate=change.size == 0)
            try:
                content.truncate(self.quota, change.size)
                if change.fh is None or change.fh not in self._handles:
                    self._store(node)  # truncate(1) by name: no close will follow
            finally:
                content.closed()
        # Modes, owners and times are not kept (the module docstring says why).
        return self._attr(node, ctx), SHORT_SECONDS

    def mkdir(self, parent: int, name: bytes, ctx: Context) -> Entry:
        folder = self._folder_node(parent)
        text = _name(name)
        if self._kind(folder.path, text) is not None:
            raise FuseError(errno.EEXIST)
        path = _join(folder.path, text)
        self._call(self.store.put_marker, path)
        with self._lock:
            self._listed(folder.path, dirs_add=text)
            node = self._node(path, True, None)
            node.lookups += 1
            return self._entry(node, ctx)

    def _listed(self, folder: str, *, dirs_add: str | None = None,
                files_add: tuple[str, ObjectInfo] | None = None,
                remove: str | None = None) -> None:
        """(Under _lock.) Apply our own change to a cached listing (so it shows at once)."""
        entry = self._folders.get(folder)
        if entry is None or entry.listing is None:
            return
        listing = entry.listing
        if remove is not None:
            listing.files.pop(remove, None)
            listing.dirs.discard(remove)
        if dirs_add is not None:
            listing.dirs.add(dirs_add)
        if files_add is not None:
            listing.files[files_add[0]] = files_add[1]

    def _keep_folder(self, folder: str) -> None:
        """A folder just lost an entry: give it a marker so that it stays when empty."""
        if not folder:
            return
        listing = self.listing(folder, fresh=True)
        if not listing.marker and not listing.files and not listing.dirs:
            self._call(self.store.put_marker, folder)

    def unlink(self, parent: int, name: bytes) -> None:
        folder = self._folder_node(parent)
        text = _name(name)
        found = self._kind(folder.path, text)
        if found is None:
            raise FuseError(errno.ENOENT)
        if found[0]:
            raise FuseError(errno.EISDIR)
        path = _join(folder.path, text)
        if found[1] is not None:
            self._call(self.store.delete, path)
            self.quota.adjust(-found[1].size)
        with self._lock:
            self._listed(folder.path, remove=text)
            self._detach(path)
        self._keep_folder(folder.path)

    def _detach(self, path: str) -> None:
        """(Under _lock.) ``path`` is gone: its node (if still referenced or open) keeps its
        bytes but is never stored again; a new file of that name gets a new inode."""
        ino = self._paths.pop(path, None)
        node = self._nodes.get(ino) if ino is not None else None
        if node is None:
            return
        if node.content is not None:
            node.content.unlinked = True
            self.quota.forget(node.ino)
            with node.content.cond:
                node.content.dirty = False
        self.failures.pop(path, None)

    def rmdir(self, parent: int, name: bytes) -> None:
        folder = self._folder_node(parent)
        text = _name(name)
        found = self._kind(folder.path, text)
        if found is None:
            raise FuseError(errno.ENOENT)
        if not found[0]:
            raise FuseError(errno.ENOTDIR)
        path = _join(folder.path, text)
        self._check_empty(path)
        self._call(self.store.delete_marker, path)
        with self._lock:
            self._listed(folder.path, remove=text)
            self._folders.pop(path, None)
            self._detach(path)
        self._keep_folder(folder.path)

    def _check_empty(self, path: str) -> None:
        listing = self.listing(path, fresh=True)
        with self._lock:
            local = any(p.startswith(path + "/") and self._local(p) for p in self._paths)
        if listing.files or listing.dirs or local:
            raise FuseError(errno.ENOTEMPTY)

    def rename(self, parent: int, name: bytes, new_parent: int, new_name: bytes,
               flags: int) -> None:
        if flags & RENAME_EXCHANGE:
            raise FuseError(errno.EINVAL, "exchanging names is not supported")
        source_folder, target_folder = self._folder_node(parent), self._folder_node(new_parent)
        old, new = _name(name), _name(new_name)
        old_path, new_path = _join(source_folder.path, old), _join(target_folder.path, new)
        found = self._kind(source_folder.path, old)
        if found is None:
            raise FuseError(errno.ENOENT)
        if old_path == new_path:
            return
        if new_path.startswith(old_path + "/"):
            raise FuseError(errno.EINVAL, "a folder cannot move into itself")
        existing = self._kind(target_folder.path, new)
        if existing is not None:
            if flags & RENAME_NOREPLACE:
                raise FuseError(errno.EEXIST)
            if existing[0] and not found[0]:
                raise FuseError(errno.EISDIR)
            if found[0] and not existing[0]:
                raise FuseError(errno.ENOTDIR)
            if existing[0]:
                self._check_empty(new_path)
                self._call(self.store.delete_marker, new_path)
        if found[0]:
            self._rename_folder(old_path, new_path)
        else:
            self._rename_file(old_path, new_path, found[1], existing)
        with self._lock:
            self._listed(source_folder.path, remove=old)
            self._listed(target_folder.path, remove=new)
            if found[0]:
                self._listed(target_folder.path, dirs_add=new)
                self._folders.pop(old_path, None)
            self._repath(old_path, new_path)
        self._keep_folder(source_folder.path)

    def _rename_file(self, old_path: str, new_path: str, info: ObjectInfo | None,
                     existing: tuple[bool, ObjectInfo | None] | None) -> None:
        with self._lock:
            ino = self._paths.get(old_path)
            node = self._nodes.get(ino) if ino is not None else None
        content = node.content if node is not None else None
        replaced = existing[1].size if existing and existing[1] else 0
        if content is not None and (content.dirty or content.etag is None):
            with content.write_lock:
                stored = self._call(self.store.put, new_path, content.path)
                with content.cond:
                    self.quota.stored(content.ino, stored.size - replaced)
                    content.etag, content.remote_size = stored.etag, stored.size
                    content.dirty = False
        else:
            self._call(self.store.copy, old_path, new_path)
            self.quota.adjust((info.size if info else 0) - replaced)
        if info is not None:
            self._call(self.store.delete, old_path)
            self.quota.adjust(-info.size)
        with self._lock:
            self._detach_other(new_path, node)

    def _detach_other(self, path: str, keep: Node | None) -> None:
        """(Under _lock.) Detach what was at ``path`` unless it is ``keep``."""
        ino = self._paths.get(path)
        if ino is not None and (keep is None or ino != keep.ino):
            self._detach(path)

    def _rename_folder(self, old_path: str, new_path: str) -> None:
        # Changed files inside go first, so that the copies below are of their last bytes.
        with self._lock:
            inside = [n for n in self._nodes.values()
                      if n.path.startswith(old_path + "/") and n.content is not None]
        for node in inside:
            self._store(node)
        entries = self._call(self.store.walk, old_path)
        for rel, marker in entries:
            if marker:
                self._call(self.store.put_marker, _join(new_path, rel))
            else:
                self._call(self.store.copy, _join(old_path, rel), _join(new_path, rel))
        self._call(self.store.put_marker, new_path)
        for rel, marker in entries:
            if marker:
                self._call(self.store.delete_marker, _join(old_path, rel))
            else:
                self._call(self.store.delete, _join(old_path, rel))
        self._call(self.store.delete_marker, old_path)
        with self._lock:
            for folder in [f for f in self._folders if f.startswith(old_path + "/")]:
                del self._folders[folder]

    def _repath(self, old_path: str, new_path: str) -> None:
        """(Under _lock.) Nodes at and under ``old_path`` now live at ``new_path``."""
        moved = [(p, i) for p, i in self._paths.items()
                 if p == old_path or p.startswith(old_path + "/")]
        for path, _ in moved:
            del self._paths[path]
        for path, ino in moved:
            target = new_path + path[len(old_path):]
            self._detach_other(target, self._nodes.get(ino))
            node = self._nodes.get(ino)
            if node is not None:
                node.path = target
                self._paths[target] = ino

    # -- Operations: files ---------------------------------------------------------------------

    def _content(self, node: Node, *, writable: bool, truncate: bool = False) -> Content:
        """The node's local bytes, made current: the stored version unless changed here
        (fetched whole for writing, unless truncated); counted as one more open."""
        with self._lock:
            if node.content is None:
                node.content = Content(node.ino, self.cache_dir / str(node.ino),
                                       self._fetchers)
                node.content.start_over(node.info)
                node.content.dirty = False
            content = node.content
        content.opened()
        try:
            if not content.dirty:
                folder, name = _split(node.path)
                info = self.listing(folder).files.get(name)
                if info is None:
                    raise FuseError(errno.ENOENT, "removed meanwhile")
                node.info = info
                if info.etag != content.etag:
                    content.start_over(info)
            if writable:
                if truncate:
                    with content.write_lock:
                        content.truncate(self.quota, 0)
                elif not content.dirty:
                    content.ensure_all(self.store, node.path)
        except BaseException:
            content.closed()
            raise
        return content

    def open(self, ino: int, flags: int) -> tuple[int, bool, bool]:
        node = self._get(ino)
        if node.is_dir:
            raise FuseError(errno.EISDIR)
        writable = flags & os.O_ACCMODE != os.O_RDONLY
        content = self._content(node, writable=writable, truncate=bool(flags & os.O_TRUNC))
        keep = content.etag is not None and content.kernel_etag == content.etag
        content.kernel_etag = content.etag
        fh = next(self._next_fh)
        with self._lock:
            self._handles[fh] = Handle(node, writable)
        return fh, keep, writable

    def create(self, parent: int, name: bytes, flags: int, ctx: Context) -> tuple[Entry, int]:
        folder = self._folder_node(parent)
        text = _name(name)
        path = _join(folder.path, text)
        found = self._kind(folder.path, text)
        if found is not None:
            if flags & os.O_EXCL:
                raise FuseError(errno.EEXIST)
            if found[0]:
                raise FuseError(errno.EISDIR)
            with self._lock:
                node = self._node(path, False, found[1])
                node.lookups += 1
            fh, _, _ = self.open(node.ino, flags)
            return self._entry(node, ctx), fh
        with self._lock:
            node = self._node(path, False, None)
            node.info = None
            if node.content is None:
                node.content = Content(node.ino, self.cache_dir / str(node.ino),
                                       self._fetchers)
            node.content.start_over(None)
            node.content.unlinked = False
            node.lookups += 1
            fh = next(self._next_fh)
            self._handles[fh] = Handle(node, True)
        node.content.opened()
        return self._entry(node, ctx), fh

    def _handle(self, fh: int) -> Handle:
        with self._lock:
            handle = self._handles.get(fh)
        if handle is None:
            raise FuseError(errno.EBADF)
        return handle

    def read(self, ino: int, fh: int, offset: int, size: int) -> bytes:
        node = self._handle(fh).node
        assert node.content is not None
        try:
            return node.content.read(self.store, node.path, offset, size)
        except FuseError as exc:
            self.failed(str(exc))
            raise

    def write(self, ino: int, fh: int, offset: int, data: memoryview) -> int:
        handle = self._handle(fh)
        if not handle.writable:
            raise FuseError(errno.EBADF)
        assert handle.node.content is not None
        return handle.node.content.write(self.quota, offset, data)

    def _store(self, node: Node) -> None:
        """Put the node's file back if it changed here; FuseError (EIO) if the store fails."""
        content = node.content
        if content is None:
            return
        try:
            if content.upload(self.store, node.path, self.quota):
                folder, name = _split(node.path)
                with self._lock:
                    node.info = ObjectInfo(content.remote_size, content.etag or "",
                                           content.mtime_ns)
                    self._listed(folder, files_add=(name, node.info))
            self.failures.pop(node.path, None)
        except StoreError as exc:
            self.failures[node.path] = str(exc)
            self.failed(f"storing {node.path} failed: {exc}")
            log.warning("storing %s failed: %s", node.path, exc)
            raise FuseError(errno_of(exc), str(exc)) from exc

    def flush(self, ino: int, fh: int) -> None:
        handle = self._handle(fh)
        if handle.writable:
            self._store(handle.node)

    def fsync(self, ino: int, fh: int) -> None:
        self._store(self._handle(fh).node)

    def release(self, ino: int, fh: int) -> None:
        with self._lock:
            handle = self._handles.pop(fh, None)
        if handle is None or handle.node.content is None:
            return
        content = handle.node.content
        content.closed()
        if content.dirty and not content.unlinked:
            # Writes through a mapping can land after the last close's flush.
            self._uploads.submit(self._store_quietly, handle.node)
        with self._lock:
            if handle.node.lookups <= 0:
                self._drop(handle.node)

    def _store_quietly(self, node: Node) -> None:
        with contextlib.suppress(FuseError):  # recorded in failures; retried later
            self._store(node)

    # -- Operations: folders -------------------------------------------------------------------

    def opendir(self, ino: int) -> int:
        node = self._folder_node(ino)
        listing = self.listing(node.path)
        entries = [(name, True) for name in sorted(listing.dirs)]
        entries += [(name, False) for name in sorted(listing.files)]
        with self._lock:
            local = sorted(_split(p)[1] for p in self._paths
                           if _split(p)[0] == node.path and p != node.path
                           and self._local(p) is not None and _split(p)[1] not in listing.files)
        entries += [(name, False) for name in local]
        fh = next(self._next_fh)
        with self._lock:
            self._dir_handles[fh] = entries
        return fh

    def readdir(self, ino: int, fh: int, offset: int,
                ctx: Context) -> list[tuple[bytes, Entry, int]]:
        folder = self._folder_node(ino)
        with self._lock:
            entries = self._dir_handles.get(fh)
        if entries is None:
            raise FuseError(errno.EBADF)
        out: list[tuple[bytes, Entry, int]] = []
        if offset == 0:
            out.append((b".", self._entry(folder, ctx), 1))
        if offset <= 1:
            parent_path = _split(folder.path)[0] if folder.path else ""
            with self._lock:
                parent = self._nodes.get(self._paths.get(parent_path, ROOT_ID)) or folder
            out.append((b"..", self._entry(parent, ctx), 2))
        listing = self.listing(folder.path)
        with self._lock:
            for index, (name, is_dir) in enumerate(entries[max(0, offset - 2):],
                                                   start=max(2, offset)):
                node = self._node(_join(folder.path, name), is_dir,
                                  None if is_dir else listing.files.get(name))
                out.append((name.encode(), self._entry(node, ctx), index + 1))
        return out

    def releasedir(self, ino: int, fh: int) -> None:
        with self._lock:
            self._dir_handles.pop(fh, None)

    def statfs(self) -> StatFs:
        block = 4096
        limit = self.quota.limit if self.quota.limit is not None else 1 << 50
        used = self.quota.used
        return StatFs(blocks=limit // block, free=max(0, limit - used) // block,
                      block_size=block)

    # -- upkeep ----------------------------------------------------------------------------------

    def retry_failed(self) -> None:
        """Store again the changed files whose store failed and that nobody has open."""
        with self._lock:
            waiting = [n for n in self._nodes.values() if n.content is not None
                       and n.content.dirty and not n.content.unlinked
                       and not n.content.handles]
        for node in waiting:
            self._store_quietly(node)

    def evict(self, limit: int = CACHE_LIMIT) -> None:
        """Drop the least recently used local copies beyond ``limit`` bytes."""
        with self._lock:
            contents = [n.content for n in self._nodes.values() if n.content is not None]
        total = sum(c.cached_bytes for c in contents)
        for content in sorted(contents, key=lambda c: c.last_used):
            if total <= limit:
                return
            if content.evictable():
                total -= content.cached_bytes
                content.drop_bytes()

    def store_all(self, deadline: float) -> list[str]:
        """Store every changed file (at stop), retrying until ``deadline``; the paths that
        could not be stored."""
        while True:
            with self._lock:
                waiting = [n for n in self._nodes.values() if n.content is not None
                           and n.content.dirty and not n.content.unlinked]
            for node in waiting:
                self._store_quietly(node)
            left = [n.path for n in waiting if n.content is not None and n.content.dirty]
            if not left or time.monotonic() >= deadline:
                return left
            time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))
