"""The FUSE wire format: the kernel's requests and our replies, as bytes (``linux/fuse.h``).

Pure functions and small types, no I/O: :mod:`helpers.storage.fuse_server` reads requests from
``/dev/fuse`` and writes replies. We speak protocol 7.31 (Linux 5.4 and later accept it; the
kernel adapts to the lower of its minor and ours): every structure below has its 7.31 layout.

A request is ``fuse_in_header`` (40 bytes) then the operation's fixed structure, then names
(NUL-terminated) or data. A reply is ``fuse_out_header`` (16 bytes: length, negative errno or
0, the request's ``unique``) then the operation's structure; a notification is the same header
with ``unique`` 0 and the notification code in place of the error.
"""

from __future__ import annotations

import errno
import stat
import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Final

KERNEL_MAJOR: Final = 7
KERNEL_MINOR: Final = 31
ROOT_ID: Final = 1
MAX_WRITE: Final = 1 << 20
"""Largest WRITE (and READ) we take: 1 MiB, i.e. 256 pages (FUSE_MAX_PAGES)."""
READ_BUFFER: Final = MAX_WRITE + 4096
"""A buffer for one request: the largest WRITE plus its headers."""


class Op(IntEnum):
    LOOKUP = 1
    FORGET = 2
    GETATTR = 3
    SETATTR = 4
    READLINK = 5
    SYMLINK = 6
    MKNOD = 8
    MKDIR = 9
    UNLINK = 10
    RMDIR = 11
    RENAME = 12
    LINK = 13
    OPEN = 14
    READ = 15
    WRITE = 16
    STATFS = 17
    RELEASE = 18
    FSYNC = 20
    SETXATTR = 21
    GETXATTR = 22
    LISTXATTR = 23
    REMOVEXATTR = 24
    FLUSH = 25
    INIT = 26
    OPENDIR = 27
    READDIR = 28
    RELEASEDIR = 29
    FSYNCDIR = 30
    GETLK = 31
    SETLK = 32
    SETLKW = 33
    ACCESS = 34
    CREATE = 35
    INTERRUPT = 36
    BMAP = 37
    DESTROY = 38
    IOCTL = 39
    POLL = 40
    NOTIFY_REPLY = 41
    BATCH_FORGET = 42
    FALLOCATE = 43
    READDIRPLUS = 44
    RENAME2 = 45
    LSEEK = 46
    COPY_FILE_RANGE = 47


class Notify(IntEnum):
    INVAL_INODE = 2
    INVAL_ENTRY = 3


# INIT flags we may ask for (the kernel offers its own set; we take the intersection).
ASYNC_READ: Final = 1 << 0
ATOMIC_O_TRUNC: Final = 1 << 3
BIG_WRITES: Final = 1 << 5
AUTO_INVAL_DATA: Final = 1 << 12
DO_READDIRPLUS: Final = 1 << 13
READDIRPLUS_AUTO: Final = 1 << 14
PARALLEL_DIROPS: Final = 1 << 18
MAX_PAGES: Final = 1 << 22
WANTED_FLAGS: Final = (ASYNC_READ | ATOMIC_O_TRUNC | BIG_WRITES | AUTO_INVAL_DATA
                       | DO_READDIRPLUS | READDIRPLUS_AUTO | PARALLEL_DIROPS | MAX_PAGES)
"""Not asked for, on purpose: POSIX_LOCKS and FLOCK_LOCKS (the kernel then keeps locks itself,
per mount), WRITEBACK_CACHE (a write must reach us while the caller waits, so a write beyond
the quota fails in the caller), NO_OPEN_SUPPORT (opens are where we check for a newer version),
DONT_MASK (the kernel applies the umask)."""

# OPEN reply flags
FOPEN_KEEP_CACHE: Final = 1 << 1
FOPEN_NOFLUSH: Final = 1 << 5
"""No FLUSH at close (Linux 5.16+; older kernels ignore it): for handles that wrote nothing,
it saves a round trip per close."""
# SETATTR valid bits
FATTR_MODE: Final = 1 << 0
FATTR_UID: Final = 1 << 1
FATTR_GID: Final = 1 << 2
FATTR_SIZE: Final = 1 << 3
FATTR_ATIME: Final = 1 << 4
FATTR_MTIME: Final = 1 << 5
FATTR_FH: Final = 1 << 6
FATTR_MTIME_NOW: Final = 1 << 8
# RENAME2 flags
RENAME_NOREPLACE: Final = 1 << 0
RENAME_EXCHANGE: Final = 1 << 1

IN_HEADER = struct.Struct("<IIQQIIIHH")
OUT_HEADER = struct.Struct("<IiQ")
_ATTR = "QQQQQQIIIIIIIIII"
ATTR = struct.Struct("<" + _ATTR)
ENTRY_OUT = struct.Struct("<QQQQII" + _ATTR)
ATTR_OUT = struct.Struct("<QII" + _ATTR)
INIT_IN = struct.Struct("<IIII")
INIT_OUT = struct.Struct("<IIIIHHIIHHI7I")
OPEN_IN = struct.Struct("<II")
CREATE_IN = struct.Struct("<IIII")
OPEN_OUT = struct.Struct("<QII")
READ_IN = struct.Struct("<QQIIQII")
WRITE_IN = struct.Struct("<QQIIQII")
WRITE_OUT = struct.Struct("<II")
RELEASE_IN = struct.Struct("<QIIQ")
FLUSH_IN = struct.Struct("<QIIQ")
FSYNC_IN = struct.Struct("<QII")
GETATTR_IN = struct.Struct("<IIQ")
SETATTR_IN = struct.Struct("<IIQQQQQQIIIIIIII")
MKDIR_IN = struct.Struct("<II")
RENAME_IN = struct.Struct("<Q")
RENAME2_IN = struct.Struct("<QII")
FORGET_IN = struct.Struct("<Q")
BATCH_FORGET_IN = struct.Struct("<II")
FORGET_ONE = struct.Struct("<QQ")
STATFS_OUT = struct.Struct("<QQQQQIIII6I")
DIRENT = struct.Struct("<QQII")
NOTIFY_INVAL_INODE = struct.Struct("<Qqq")
NOTIFY_INVAL_ENTRY = struct.Struct("<QII")


class FuseError(Exception):
    """An operation's failure, answered to the kernel as ``-errno``."""

    def __init__(self, code: int, message: str = "") -> None:
        super().__init__(message or errno.errorcode.get(code, str(code)))
        self.errno = code


@dataclass(frozen=True)
class Context:
    """Who asked: the caller's ids as the kernel sees them (the tool's process)."""

    uid: int
    gid: int
    pid: int


@dataclass(frozen=True)
class Request:
    opcode: int
    unique: int
    nodeid: int
    context: Context
    body: memoryview
    """What follows the header (the operation's structure, names, data)."""


def parse_request(buffer: bytes) -> Request:
    """Split one request read from ``/dev/fuse`` into its header and body."""
    if len(buffer) < IN_HEADER.size:
        raise ValueError(f"short FUSE request: {len(buffer)} bytes")
    length, opcode, unique, nodeid, uid, gid, pid, _ext, _pad = IN_HEADER.unpack_from(buffer)
    if length != len(buffer):
        raise ValueError(f"FUSE request says {length} bytes, got {len(buffer)}")
    return Request(opcode, unique, nodeid, Context(uid, gid, pid),
                   memoryview(buffer)[IN_HEADER.size:])


def names(body: memoryview, count: int) -> list[bytes]:
    """The ``count`` NUL-terminated names at the start of ``body``."""
    parts = bytes(body).split(b"\0")
    if len(parts) <= count:
        raise FuseError(errno.EINVAL, "malformed name in request")
    return parts[:count]


def reply(unique: int, payload: bytes = b"") -> bytes:
    return OUT_HEADER.pack(OUT_HEADER.size + len(payload), 0, unique) + payload


def reply_header(unique: int, payload_length: int) -> bytes:
    """The header alone, for a reply whose payload is written after it (``writev``)."""
    return OUT_HEADER.pack(OUT_HEADER.size + payload_length, 0, unique)


def reply_error(unique: int, code: int) -> bytes:
    return OUT_HEADER.pack(OUT_HEADER.size, -code, unique)


def notification(code: Notify, payload: bytes) -> bytes:
    return OUT_HEADER.pack(OUT_HEADER.size + len(payload), int(code), 0) + payload


@dataclass(frozen=True)
class Attr:
    """What ``stat`` shows: the fields of ``struct fuse_attr`` we fill in."""

    ino: int
    mode: int
    size: int
    mtime_ns: int
    uid: int = 0
    gid: int = 0
    nlink: int = 1
    blksize: int = 1 << 20
    """Large: programs size their buffers (and so their requests to us) by it."""

    def pack(self) -> bytes:
        seconds, nanos = divmod(max(self.mtime_ns, 0), 1_000_000_000)
        blocks = (self.size + 511) // 512
        return ATTR.pack(self.ino, self.size, blocks, seconds, seconds, seconds,
                         nanos, nanos, nanos, self.mode, self.nlink, self.uid, self.gid,
                         0, self.blksize, 0)

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)


def _split_seconds(value: float) -> tuple[int, int]:
    whole = int(value)
    return whole, int((value - whole) * 1_000_000_000)


@dataclass(frozen=True)
class Entry:
    """A name's answer to LOOKUP (and MKDIR, CREATE, READDIRPLUS): its inode and attributes,
    and how long the kernel may keep each."""

    attr: Attr
    entry_ttl: float
    attr_ttl: float

    def pack(self) -> bytes:
        entry_s, entry_ns = _split_seconds(self.entry_ttl)
        attr_s, attr_ns = _split_seconds(self.attr_ttl)
        return ENTRY_OUT.pack(self.attr.ino, 0, entry_s, attr_s, entry_ns, attr_ns,
                              *ATTR.unpack(self.attr.pack()))


def attr_out(attr: Attr, ttl: float) -> bytes:
    seconds, nanos = _split_seconds(ttl)
    return ATTR_OUT.pack(seconds, nanos, 0, *ATTR.unpack(attr.pack()))


@dataclass(frozen=True)
class SetAttr:
    """The changes a SETATTR asks for (None: unchanged)."""

    size: int | None = None
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    mtime_ns: int | None = None
    fh: int | None = None


def parse_setattr(body: memoryview) -> SetAttr:
    (valid, _pad, fh, size, _lock, _atime, mtime, _ctime, _ans, mtimensec, _cns, mode, _u4,
     uid, gid, _u5) = SETATTR_IN.unpack_from(body)
    mtime_ns = None
    if valid & FATTR_MTIME:
        mtime_ns = mtime * 1_000_000_000 + mtimensec
    return SetAttr(size=size if valid & FATTR_SIZE else None,
                   mode=mode if valid & FATTR_MODE else None,
                   uid=uid if valid & FATTR_UID else None,
                   gid=gid if valid & FATTR_GID else None,
                   mtime_ns=mtime_ns, fh=fh if valid & FATTR_FH else None)


@dataclass(frozen=True)
class StatFs:
    blocks: int
    free: int
    files: int = 1 << 20
    files_free: int = 1 << 20
    block_size: int = 4096
    name_max: int = 255

    def pack(self) -> bytes:
        return STATFS_OUT.pack(self.blocks, self.free, self.free, self.files, self.files_free,
                               self.block_size, self.name_max, self.block_size, 0,
                               0, 0, 0, 0, 0, 0)


def _pad8(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 8)


def dirent(ino: int, next_offset: int, name: bytes, mode: int) -> bytes:
    """One ``fuse_dirent`` (READDIR), padded to 8 bytes."""
    return _pad8(DIRENT.pack(ino, next_offset, len(name), (mode & 0o170000) >> 12) + name)


def direntplus(entry: Entry, next_offset: int, name: bytes) -> bytes:
    """One ``fuse_direntplus`` (READDIRPLUS): the entry, then the dirent, padded."""
    return _pad8(entry.pack() + DIRENT.pack(entry.attr.ino, next_offset, len(name),
                                            (entry.attr.mode & 0o170000) >> 12) + name)


def init_reply(unique: int, body: memoryview) -> tuple[bytes, int]:
    """Our answer to INIT, and the flags agreed on."""
    major, minor, max_readahead, offered = INIT_IN.unpack_from(body)
    if major != KERNEL_MAJOR:
        # The kernel retries with our major if it can; 7 is the only one there is.
        return reply(unique, INIT_OUT.pack(KERNEL_MAJOR, KERNEL_MINOR, 0, 0, 0, 0, 0, 0, 0, 0,
                                           0, 0, 0, 0, 0, 0, 0, 0)), 0
    if minor < 23:
        raise FuseError(errno.EPROTO, f"kernel FUSE protocol 7.{minor} is too old (7.23+)")
    flags = offered & WANTED_FLAGS
    return reply(unique, INIT_OUT.pack(
        KERNEL_MAJOR, KERNEL_MINOR, min(max_readahead, MAX_WRITE), flags,
        16, 12,  # max_background, congestion_threshold: libfuse's defaults
        MAX_WRITE, 1,  # max_write, time granularity (ns)
        MAX_WRITE // 4096, 0, 0, 0, 0, 0, 0, 0, 0, 0)), flags
