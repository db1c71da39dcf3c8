"""HTTP/1.1 message heads and body framing, parsed once per hop that must look at them.

Shared by the edge router (routes every request of a keep-alive connection by ``Host``) and the
auth helper's gate (lets a signed-in request through to the tool). Neither decodes bodies: they
find where each request and response ends and forward the bytes unchanged. Heads are rewritten:
hop-by-hop headers go, ``X-Forwarded-*`` are set by the router (never trusted from clients).
Malformed input raises :class:`protocol.errors.HttpError` (400 to a client, 502 from an
upstream).

Strict where two parsers could disagree (RFC 9112): lines end with CRLF only (a bare LF is
refused, in heads and in chunked framing), header values and request targets carry no control
characters (HTAB aside), and a chunk size is hex digits only (``0x5``, ``+5``, ``-0``, ``5_0``,
`` 5`` are refused; Python's ``int(_, 16)`` takes them all). A proxy that reads a message
differently from the server behind it is how requests are smuggled past it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from protocol.errors import HttpError

HOP_BY_HOP: Final = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"proxy-authenticate",
    b"proxy-authorization", b"te", b"trailer", b"upgrade",
})
"""Dropped in both directions. ``Transfer-Encoding`` stays: chunked bodies pass through as-is.
``Upgrade``/``Connection: upgrade`` are put back for an upgrade request and its 101."""
FORWARDED: Final = frozenset({b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host",
                              b"forwarded", b"x-real-ip"})
"""Who the client is and how it came: set by the router (``X-Forwarded-*``), never taken from
the client. ``X-Real-IP`` is not set by us, but tools (and nginx's realip) read it as the
client's address, so a client's own is dropped."""
METHODS_WITHOUT_RESPONSE_BODY: Final = frozenset({b"HEAD"})
TOKEN_CHARS: Final = frozenset(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz"
                               b"ABCDEFGHIJKLMNOPQRSTUVWXYZ")

LENGTH: Final = 0
CHUNKED: Final = 1
UNTIL_CLOSE: Final = 2


@dataclass(slots=True)
class RequestHead:
    method: bytes
    target: bytes
    version: bytes
    host: str
    """Lower-case, without port."""
    raw_host: bytes
    forwarded_for: bytes | None
    """The ``X-Forwarded-For`` it came with (set by the router, read by the pod's hops)."""
    headers: list[tuple[bytes, bytes]]
    """Every header but hop-by-hop and X-Forwarded-*, in order (original names)."""
    framing: int
    length: int
    upgrade: bytes | None
    close: bool
    """The client asked to close after this request (``Connection: close`` or HTTP/1.0)."""

    def encode(self, client_ip: str, proto: bytes) -> bytes:
        lines = [b"%s %s %s" % (self.method, self.target, self.version)]
        lines += [b"%s: %s" % item for item in self.headers]
        if self.upgrade is not None:
            lines += [b"Connection: upgrade", b"Upgrade: " + self.upgrade]
        elif self.close:
            lines.append(b"Connection: close")
        lines += [b"X-Forwarded-For: " + client_ip.encode(), b"X-Forwarded-Proto: " + proto,
                  b"X-Forwarded-Host: " + self.raw_host]
        return b"\r\n".join(lines) + b"\r\n\r\n"


_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_VALUE = rb"[\t\x20-\x7e\x80-\xff]*"
"""A field value: visible characters, spaces, HTAB, obs-text; no control character."""
_FIELDS = re.compile(rb"(?:" + _TOKEN + rb":" + _VALUE + rb"\r\n)*")
_FIELD = re.compile(rb"(" + _TOKEN + rb"):[ \t]*([^\r\n]*?)[ \t]*\r\n")
_TARGET = re.compile(rb"[\x21-\x7e\x80-\xff]+")
"""A request target: no space, no control character (a bare LF would end the line for
another parser)."""
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,15})(?:[ \t]*;" + _VALUE + rb")?")
"""``chunk-size [chunk-ext]``: hex digits only, then extensions we pass on unread."""
_TRAILER_LINE = re.compile(_TOKEN + rb":" + _VALUE)


def _split_head(head: bytes) -> tuple[list[bytes], list[tuple[bytes, bytes, bytes]]]:
    """Start line parts and ``(name, lower name, value)`` headers; raise HttpError.

    Validation and splitting are two regular expressions (C speed): every line must be
    ``token ":" value`` with no control characters, so no header can hide from our framing.
    """
    start_end = head.find(b"\r\n")
    if start_end < 0:
        start_line, fields = head, b""
    else:
        start_line, fields = head[:start_end], head[start_end + 2:] + b"\r\n"
    start = start_line.split(b" ", 2)
    if len(start) != 3:
        raise HttpError("malformed start line")
    if _FIELDS.fullmatch(fields) is None:
        raise HttpError("malformed header line")
    return start, [(name, name.lower(), value) for name, value in _FIELD.findall(fields)]


def _tokens(value: bytes) -> set[bytes]:
    return {t.strip().lower() for t in value.split(b",") if t.strip()}


def _framing(headers: list[tuple[bytes, bytes, bytes]]) -> tuple[int, int, bool]:
    """(framing, length, seen) from Content-Length / Transfer-Encoding; refuse ambiguity."""
    length: int | None = None
    chunked = False
    for _name, lower, value in headers:
        if lower == b"content-length":
            if not value.isdigit() or len(value) > 18:
                raise HttpError("invalid Content-Length")
            if length is not None and length != int(value):
                raise HttpError("conflicting Content-Length headers")
            length = int(value)
        elif lower == b"transfer-encoding":
            codings = [t.strip().lower() for t in value.split(b",")]
            if codings[-1] != b"chunked" or chunked:
                raise HttpError("unsupported Transfer-Encoding")
            chunked = True
    if chunked and length is not None:
        raise HttpError("both Content-Length and Transfer-Encoding")
    if chunked:
        return CHUNKED, 0, True
    return LENGTH, length or 0, length is not None


def parse_request(head: bytes) -> RequestHead:  # noqa: PLR0912 - one branch per header
    """Parse a request head (without the final blank line)."""
    (method, target, version), headers = _split_head(head)
    if version not in (b"HTTP/1.1", b"HTTP/1.0"):
        raise HttpError("unsupported HTTP version")
    if not method or not TOKEN_CHARS.issuperset(method):
        raise HttpError("malformed method")
    if _TARGET.fullmatch(target) is None:
        raise HttpError("malformed request target")
    raw_host = b""
    forwarded_for: bytes | None = None
    connection: set[bytes] = set()
    upgrade: bytes | None = None
    kept: list[tuple[bytes, bytes]] = []
    for name, lower, value in headers:
        if lower == b"host":
            if raw_host:
                raise HttpError("more than one Host header")
            raw_host = value
        elif lower == b"connection":
            connection |= _tokens(value)
        elif lower == b"upgrade":
            upgrade = value
        elif lower == b"x-forwarded-for":
            forwarded_for = value
        if lower not in HOP_BY_HOP and lower not in FORWARDED:
            kept.append((name, value))
    if connection:
        kept = [(n, v) for n, v in kept if n.lower() not in connection]
    if not raw_host:
        raise HttpError("missing Host header")
    framing, length, _ = _framing(headers)
    if upgrade is not None and b"upgrade" not in connection:
        upgrade = None
    close = b"close" in connection or (version == b"HTTP/1.0" and b"keep-alive" not in connection)
    return RequestHead(method, target, version, host_of(raw_host), raw_host, forwarded_for,
                       kept, framing, length, upgrade, close)


def host_of(raw_host: bytes) -> str:
    """Lower-case host without port; raise HttpError for anything that is not a hostname."""
    try:
        text = raw_host.decode("ascii").lower()
    except UnicodeDecodeError:
        raise HttpError("non-ASCII Host header") from None
    if text.startswith("["):
        host, _, _ = text[1:].partition("]")
        return host
    host, _, port = text.partition(":")
    if port and not port.isdigit():
        raise HttpError("malformed Host header")
    return host


@dataclass(slots=True)
class ResponseHead:
    status: int
    head: bytes
    """The rewritten head, ready for the client (with its blank line)."""
    framing: int
    length: int
    close: bool


def parse_response(head: bytes, *, request_method: bytes, upgrade: bytes | None,
                   close: bool) -> ResponseHead:
    """Parse an upstream response head; ``close``: the client will be disconnected after it."""
    (version, code, reason), headers = _split_head(head)
    if not version.startswith(b"HTTP/1.") or not code.isdigit() or len(code) != 3:
        raise HttpError("malformed status line")
    status = int(code)
    connection: set[bytes] = set()
    for _name, lower, value in headers:
        if lower == b"connection":
            connection |= _tokens(value)
    framing, length, framed = _framing(headers)
    if (status < 200 or status in (204, 304)
            or request_method in METHODS_WITHOUT_RESPONSE_BODY):
        framing, length = LENGTH, 0
    elif framing == LENGTH and not framed:
        framing = UNTIL_CLOSE
    close = (close or b"close" in connection or framing == UNTIL_CLOSE
             or (version == b"HTTP/1.0" and b"keep-alive" not in connection))
    lines = [b"%s %s %s" % (version, code, reason)]
    lines += [b"%s: %s" % (name, value) for name, lower, value in headers
              if lower not in HOP_BY_HOP and lower not in connection]
    if status == 101 and upgrade is not None:
        lines += [b"Connection: upgrade", b"Upgrade: " + upgrade]
    elif close and status >= 200:
        lines.append(b"Connection: close")
    return ResponseHead(status, b"\r\n".join(lines) + b"\r\n\r\n", framing, length, close)


class ChunkedScanner:
    """Finds the end of a chunked body in a byte stream without copying the body."""

    __slots__ = ("_line", "_remaining", "_state")

    _SIZE, _DATA, _DATA_CRLF, _TRAILER = 0, 1, 2, 3
    MAX_LINE = 4096

    def __init__(self) -> None:
        self._state = self._SIZE
        self._remaining = 0
        self._line = b""

    def scan(self, data: memoryview, start: int = 0) -> int:
        """Consume ``data[start:]``; return the offset just past the body's end, or -1."""
        pos, end = start, len(data)
        while pos < end:
            if self._state == self._DATA:
                take = min(self._remaining, end - pos)
                pos += take
                self._remaining -= take
                if not self._remaining:
                    self._state = self._DATA_CRLF
                continue
            newline = bytes(data[pos:min(end, pos + self.MAX_LINE)]).find(b"\n")
            if newline < 0:
                self._line += bytes(data[pos:end])
                if len(self._line) > self.MAX_LINE:
                    raise HttpError("chunk line too long")
                return -1
            line = self._line + bytes(data[pos:pos + newline])
            self._line = b""
            pos += newline + 1
            if not line.endswith(b"\r"):
                raise HttpError("bare LF in chunked framing")
            line = line[:-1]
            if self._state == self._SIZE:
                size = _CHUNK_SIZE.fullmatch(line)
                if size is None:
                    raise HttpError("malformed chunk size")
                self._remaining = int(size.group(1), 16)
                self._state = self._DATA if self._remaining else self._TRAILER
            elif self._state == self._DATA_CRLF:
                if line:
                    raise HttpError("chunk data longer than its size")
                self._state = self._SIZE
            elif not line:  # the blank line after the trailers ends the body
                self._state = self._SIZE
                return pos
            elif _TRAILER_LINE.fullmatch(line) is None:
                raise HttpError("malformed trailer")
        return -1


class BodyTracker:
    """Where the current body ends, for any framing."""

    __slots__ = ("_chunks", "framing", "remaining")

    def __init__(self, framing: int, length: int) -> None:
        self.framing = framing
        self.remaining = length
        self._chunks = ChunkedScanner() if framing == CHUNKED else None

    @property
    def done(self) -> bool:
        return self.framing == LENGTH and self.remaining == 0

    def advance(self, data: memoryview, start: int) -> int:
        """Consume from ``start``; the offset where the body ended, or -1 if it goes on."""
        if self.framing == LENGTH:
            available = len(data) - start
            if available >= self.remaining:
                end = start + self.remaining
                self.remaining = 0
                return end
            self.remaining -= available
            return -1
        if self._chunks is not None:
            return self._chunks.scan(data, start)
        return -1
