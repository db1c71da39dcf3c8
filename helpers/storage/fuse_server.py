"""Serving a FUSE mount: mount and unmount (root, CAP_SYS_ADMIN), and the request loop.

:func:`mount` opens ``/dev/fuse`` and mounts it at a folder with ``mount(2)``; nothing else
needs a capability. :class:`FuseServer` then reads requests from that descriptor in a few
threads (a slow operation, such as an upload, holds one thread, never the whole mount) and
answers each through an :class:`Operations` implementation. The kernel side is
``linux/fuse.h``; the bytes are :mod:`helpers.storage.fuse_wire`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import stat
import threading
from collections.abc import Callable
from typing import Protocol

from helpers.storage import fuse_wire as wire
from helpers.storage.fuse_wire import (
    Attr,
    Context,
    Entry,
    FuseError,
    Op,
    Request,
    SetAttr,
    StatFs,
)

log = logging.getLogger("dit4c.storage.fuse")

MS_NOSUID = 2
MS_NODEV = 4
MNT_DETACH = 2
FSNAME = "dit4c-storage"
THREADS = 12

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{what}: {os.strerror(code)}")


def mount(target: str, owner_uid: int, owner_gid: int) -> int:
    """Mount a FUSE file system at ``target`` (any user may enter it: ``allow_other``; the
    server checks nothing, every file is the user's) and return the ``/dev/fuse`` descriptor
    that serves it."""
    fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
    options = (f"fd={fd},rootmode={stat.S_IFDIR:o},user_id={owner_uid},group_id={owner_gid},"
               "allow_other")
    try:
        _check(_libc.mount(FSNAME.encode(), target.encode(), b"fuse." + FSNAME.encode(),
                           MS_NOSUID | MS_NODEV, options.encode()), f"mount {target}")
    except OSError:
        os.close(fd)
        raise
    return fd


def unmount(target: str) -> bool:
    """Detach whatever is mounted at ``target`` (a dead FUSE mount too); False if nothing
    was."""
    if _libc.umount2(target.encode(), MNT_DETACH) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOENT):  # not a mount point
        return False
    raise OSError(code, f"umount {target}: {os.strerror(code)}")


class Operations(Protocol):
    """What a file system served by :class:`FuseServer` implements.

    Inode numbers are the file system's own (1 is the root); ``fh`` values too. Each method
    raises :class:`FuseError` with the errno the caller gets. Methods are called from several
    threads at once.
    """

    def lookup(self, parent: int, name: bytes, ctx: Context) -> Entry: ...
    def forget(self, ino: int, count: int) -> None: ...
    def getattr(self, ino: int, ctx: Context) -> tuple[Attr, float]: ...
    def setattr(self, ino: int, change: SetAttr, ctx: Context) -> tuple[Attr, float]: ...
    def mkdir(self, parent: int, name: bytes, ctx: Context) -> Entry: ...
    def unlink(self, parent: int, name: bytes) -> None: ...
    def rmdir(self, parent: int, name: bytes) -> None: ...
    def rename(self, parent: int, name: bytes, new_parent: int, new_name: bytes,
               flags: int) -> None: ...
    def open(self, ino: int, flags: int) -> tuple[int, bool, bool]:
        """(fh, keep the kernel's cached pages, flush at close)."""
    def create(self, parent: int, name: bytes, flags: int, ctx: Context) -> tuple[Entry, int]: ...
    def read(self, ino: int, fh: int, offset: int, size: int) -> bytes: ...
    def write(self, ino: int, fh: int, offset: int, data: memoryview) -> int: ...
    def flush(self, ino: int, fh: int) -> None: ...
    def release(self, ino: int, fh: int) -> None: ...
    def fsync(self, ino: int, fh: int) -> None: ...
    def opendir(self, ino: int) -> int: ...
    def readdir(self, ino: int, fh: int, offset: int,
                ctx: Context) -> list[tuple[bytes, Entry, int]]:
        """Entries after ``offset``: (name, entry, the offset of the next one)."""
    def remember(self, ino: int) -> None:
        """The kernel now holds one more reference to ``ino`` (a READDIRPLUS entry it got),
        to be given back by :meth:`forget`."""
    def releasedir(self, ino: int, fh: int) -> None: ...
    def statfs(self) -> StatFs: ...


# Refused outright: what S3 objects cannot be. EPERM, as on file systems without links.
_REFUSED = {Op.SYMLINK: errno.EPERM, Op.LINK: errno.EPERM, Op.MKNOD: errno.EPERM,
            Op.READLINK: errno.EINVAL}


class FuseServer:
    """Answers the kernel's requests on ``fd`` with ``ops`` until the mount goes away."""

    def __init__(self, fd: int, ops: Operations, threads: int = THREADS) -> None:
        self.fd = fd
        self.ops = ops
        self.threads = threads
        self.flags = 0
        """The INIT flags agreed with the kernel."""
        self._initialised = threading.Event()
        self._handlers: dict[int, Callable[[Request], bytes | list[bytes] | None]] = {
            Op.LOOKUP: self._lookup, Op.FORGET: self._forget,
            Op.BATCH_FORGET: self._batch_forget, Op.GETATTR: self._getattr,
            Op.SETATTR: self._setattr, Op.MKDIR: self._mkdir, Op.UNLINK: self._unlink,
            Op.RMDIR: self._rmdir, Op.RENAME: self._rename, Op.RENAME2: self._rename2,
            Op.OPEN: self._open, Op.CREATE: self._create, Op.READ: self._read,
            Op.WRITE: self._write, Op.FLUSH: self._flush, Op.RELEASE: self._release,
            Op.FSYNC: self._fsync, Op.OPENDIR: self._opendir, Op.READDIR: self._readdir,
            Op.READDIRPLUS: self._readdirplus, Op.RELEASEDIR: self._releasedir,
            Op.FSYNCDIR: lambda req: wire.reply(req.unique), Op.STATFS: self._statfs,
            Op.INTERRUPT: lambda req: None,  # allowed: the request simply completes
        }

    # -- the loop ----------------------------------------------------------------------------

    def serve(self) -> None:
        """Serve until the file system is unmounted (or its connection aborted)."""
        workers = [threading.Thread(target=self._loop, name=f"dit4c-fuse-{n}", daemon=True)
                   for n in range(self.threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()

    def _loop(self) -> None:
        while True:
            try:
                buffer = os.read(self.fd, wire.READ_BUFFER)
            except OSError as exc:
                if exc.errno in (errno.EINTR, errno.EAGAIN, errno.ENOENT):
                    continue  # ENOENT: a request interrupted before we read it
                if exc.errno == errno.ENODEV:  # unmounted
                    return
                raise
            if not buffer:
                return
            self._handle(buffer)

    def _handle(self, buffer: bytes) -> None:
        request = wire.parse_request(buffer)
        try:
            if request.opcode == Op.INIT:
                answer: bytes | list[bytes] | None
                answer, self.flags = wire.init_reply(request.unique, request.body)
                self._initialised.set()
            elif request.opcode == Op.DESTROY:
                answer = wire.reply(request.unique)
            elif request.opcode in _REFUSED:
                answer = wire.reply_error(request.unique, _REFUSED[Op(request.opcode)])
            else:
                handler = self._handlers.get(request.opcode)
                if handler is None:  # xattrs, access, fallocate, locks, ...: the kernel
                    answer = wire.reply_error(request.unique, errno.ENOSYS)  # stops asking
                else:
                    answer = handler(request)
        except FuseError as exc:
            answer = wire.reply_error(request.unique, exc.errno)
        except OSError as exc:
            log.warning("op %s failed: %s", request.opcode, exc)
            answer = wire.reply_error(request.unique, exc.errno or errno.EIO)
        except Exception:
            log.exception("op %s on inode %s failed", request.opcode, request.nodeid)
            answer = wire.reply_error(request.unique, errno.EIO)
        if answer is None:
            return
        self._send(answer)

    def _send(self, answer: bytes | list[bytes]) -> None:
        try:
            if isinstance(answer, list):
                os.writev(self.fd, answer)
            else:
                os.write(self.fd, answer)
        except OSError as exc:
            # ENOENT: the request was interrupted meanwhile, nobody waits for the answer.
            if exc.errno not in (errno.ENOENT, errno.ENODEV):
                log.warning("cannot answer the kernel: %s", exc)

    def notify_inval_entry(self, parent: int, name: bytes) -> None:
        """Tell the kernel to forget ``name`` in ``parent`` now (it changed elsewhere)."""
        if self._initialised.is_set():
            self._notify(wire.Notify.INVAL_ENTRY,
                         wire.NOTIFY_INVAL_ENTRY.pack(parent, len(name), 0) + name + b"\0")

    def notify_inval_inode(self, ino: int) -> None:
        """Tell the kernel to drop its cached attributes and pages of ``ino``."""
        if self._initialised.is_set():
            self._notify(wire.Notify.INVAL_INODE, wire.NOTIFY_INVAL_INODE.pack(ino, 0, -1))

    def _notify(self, code: wire.Notify, payload: bytes) -> None:
        try:
            os.write(self.fd, wire.notification(code, payload))
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ENODEV):
                log.debug("notification %s refused: %s", code.name, exc)

    # -- operations --------------------------------------------------------------------------

    def _lookup(self, req: Request) -> bytes:
        (name,) = wire.names(req.body, 1)
        return wire.reply(req.unique, self.ops.lookup(req.nodeid, name, req.context).pack())

    def _forget(self, req: Request) -> None:
        (count,) = wire.FORGET_IN.unpack_from(req.body)
        self.ops.forget(req.nodeid, count)

    def _batch_forget(self, req: Request) -> None:
        count, _ = wire.BATCH_FORGET_IN.unpack_from(req.body)
        for n in range(count):
            ino, lookups = wire.FORGET_ONE.unpack_from(
                req.body, wire.BATCH_FORGET_IN.size + n * wire.FORGET_ONE.size)
            self.ops.forget(ino, lookups)

    def _getattr(self, req: Request) -> bytes:
        attr, ttl = self.ops.getattr(req.nodeid, req.context)
        return wire.reply(req.unique, wire.attr_out(attr, ttl))

    def _setattr(self, req: Request) -> bytes:
        change = wire.parse_setattr(req.body)
        attr, ttl = self.ops.setattr(req.nodeid, change, req.context)
        return wire.reply(req.unique, wire.attr_out(attr, ttl))

    def _mkdir(self, req: Request) -> bytes:
        (name,) = wire.names(req.body[wire.MKDIR_IN.size:], 1)
        return wire.reply(req.unique, self.ops.mkdir(req.nodeid, name, req.context).pack())

    def _unlink(self, req: Request) -> bytes:
        (name,) = wire.names(req.body, 1)
        self.ops.unlink(req.nodeid, name)
        return wire.reply(req.unique)

    def _rmdir(self, req: Request) -> bytes:
        (name,) = wire.names(req.body, 1)
        self.ops.rmdir(req.nodeid, name)
        return wire.reply(req.unique)

    def _rename(self, req: Request) -> bytes:
        (new_parent,) = wire.RENAME_IN.unpack_from(req.body)
        old, new = wire.names(req.body[wire.RENAME_IN.size:], 2)
        self.ops.rename(req.nodeid, old, new_parent, new, 0)
        return wire.reply(req.unique)

    def _rename2(self, req: Request) -> bytes:
        new_parent, flags, _ = wire.RENAME2_IN.unpack_from(req.body)
        old, new = wire.names(req.body[wire.RENAME2_IN.size:], 2)
        self.ops.rename(req.nodeid, old, new_parent, new, flags)
        return wire.reply(req.unique)

    def _open(self, req: Request) -> bytes:
        flags, _ = wire.OPEN_IN.unpack_from(req.body)
        fh, keep, flush = self.ops.open(req.nodeid, flags)
        open_flags = (wire.FOPEN_KEEP_CACHE if keep else 0) | (0 if flush else wire.FOPEN_NOFLUSH)
        return wire.reply(req.unique, wire.OPEN_OUT.pack(fh, open_flags, 0))

    def _create(self, req: Request) -> bytes:
        flags, _mode, _umask, _ = wire.CREATE_IN.unpack_from(req.body)
        (name,) = wire.names(req.body[wire.CREATE_IN.size:], 1)
        entry, fh = self.ops.create(req.nodeid, name, flags, req.context)
        return wire.reply(req.unique, entry.pack() + wire.OPEN_OUT.pack(fh, 0, 0))

    def _read(self, req: Request) -> list[bytes]:
        fh, offset, size, *_ = wire.READ_IN.unpack_from(req.body)
        data = self.ops.read(req.nodeid, fh, offset, size)
        return [wire.reply_header(req.unique, len(data)), data]

    def _write(self, req: Request) -> bytes:
        fh, offset, size, *_ = wire.WRITE_IN.unpack_from(req.body)
        data = req.body[wire.WRITE_IN.size:wire.WRITE_IN.size + size]
        written = self.ops.write(req.nodeid, fh, offset, data)
        return wire.reply(req.unique, wire.WRITE_OUT.pack(written, 0))

    def _flush(self, req: Request) -> bytes:
        (fh, *_) = wire.FLUSH_IN.unpack_from(req.body)
        self.ops.flush(req.nodeid, fh)
        return wire.reply(req.unique)

    def _release(self, req: Request) -> bytes:
        (fh, *_) = wire.RELEASE_IN.unpack_from(req.body)
        self.ops.release(req.nodeid, fh)
        return wire.reply(req.unique)

    def _fsync(self, req: Request) -> bytes:
        (fh, *_) = wire.FSYNC_IN.unpack_from(req.body)
        self.ops.fsync(req.nodeid, fh)
        return wire.reply(req.unique)

    def _opendir(self, req: Request) -> bytes:
        return wire.reply(req.unique, wire.OPEN_OUT.pack(self.ops.opendir(req.nodeid), 0, 0))

    def _listing(self, req: Request, plus: bool) -> bytes:
        fh, offset, size, *_ = wire.READ_IN.unpack_from(req.body)
        out: list[bytes] = []
        used = 0
        for name, entry, next_offset in self.ops.readdir(req.nodeid, fh, offset, req.context):
            record = (wire.direntplus(entry, next_offset, name) if plus
                      else wire.dirent(entry.attr.ino, next_offset, name, entry.attr.mode))
            if used + len(record) > size:
                break
            if plus and name not in (b".", b".."):  # the kernel counts a lookup for these
                self.ops.remember(entry.attr.ino)
            out.append(record)
            used += len(record)
        return wire.reply(req.unique, b"".join(out))

    def _readdir(self, req: Request) -> bytes:
        return self._listing(req, plus=False)

    def _readdirplus(self, req: Request) -> bytes:
        return self._listing(req, plus=True)

    def _releasedir(self, req: Request) -> bytes:
        (fh, *_) = wire.RELEASE_IN.unpack_from(req.body)
        self.ops.releasedir(req.nodeid, fh)
        return wire.reply(req.unique)

    def _statfs(self, req: Request) -> bytes:
        return wire.reply(req.unique, self.ops.statfs().pack())
