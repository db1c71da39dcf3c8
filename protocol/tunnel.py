"""Tunnel wire format between the edge router and a pod's listener helper (docs/edge-router.md).

The listener dials ``TUNNEL_PATH`` on a router over WebSocket and presents its tunnel token as
``Authorization: Bearer <token>`` together with the host it serves in ``HOST_HEADER``. Every
binary WebSocket message then carries one or more frames::

    +------+-----------+------------+-----------------+
    | kind | stream id | length     | payload         |
    | u8   | u32 (BE)  | u32 (BE)   | ``length`` bytes|
    +------+-----------+------------+-----------------+

Streams are opened by the router only (one per public client connection). Each stream is a
bidirectional byte pipe with its own credit-based flow control: a side may have at most
``window`` unacknowledged bytes in flight per stream, and the receiver grants more (``WINDOW``)
only once it has handed the bytes on to a sink that is not itself backed up. A slow reader
therefore stalls its own stream only, and the memory a stream can pin is bounded. Each side
enforces the other's accounting: DATA beyond the granted credit, an OPEN larger than the
window, or a grant of more than was ever sent is a :class:`TunnelError` (the tunnel closes).

=========  ============================================================================
``OPEN``   router -> listener: a new stream; payload is its first bytes (may be empty)
``DATA``   bytes of a stream
``EOF``    the sender will send no more bytes on this stream (a half-close)
``CLOSE``  the stream is over; payload is a UTF-8 reason (the peer drops its end)
``WINDOW`` payload u32: the receiver grants that many more bytes of credit
``TOKEN``  listener -> router, stream 0: a renewed tunnel token (ASCII) for the same host; the
           router checks it as at the handshake and the tunnel lives until its expiry
=========  ============================================================================

Tunnel tokens live at most an hour (``protocol.tokens.TUNNEL_TOKEN_MAX_LIFETIME``): the router
ends a tunnel whose token expired, so a long-running tunnel stays up by ``TOKEN`` frames with
the tokens the node renews, without dropping its streams.

Pure Python on asyncio only: the listener runs this on Debian's Python with aiohttp 3.8, the router
on the development virtualenv. :func:`serve` carries a mux over any aiohttp WebSocket (the
listener's); the router drives its own WebSocket through :meth:`Outbox.take`.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Final, Protocol

from protocol.errors import TunnelError

TUNNEL_PATH: Final = "/.dit4c/tunnel"
HOST_HEADER: Final = "X-Dit4c-Tunnel-Host"
"""The hostname the listener asks to serve; the tunnel token must bind exactly this host."""

OPEN: Final = 1
DATA: Final = 2
EOF: Final = 3
CLOSE: Final = 4
WINDOW: Final = 5
TOKEN: Final = 6
KINDS: Final = frozenset({OPEN, DATA, EOF, CLOSE, WINDOW, TOKEN})
MAX_TOKEN_BYTES: Final = 8192

HEADER: Final = struct.Struct("!BII")
CREDIT: Final = struct.Struct("!I")
DEFAULT_WINDOW: Final = 1024 * 1024
"""Initial per-stream credit in each direction (bytes)."""
MAX_MESSAGE_BYTES: Final = 4 * 1024 * 1024
"""Largest WebSocket message either side sends; receivers refuse larger ones."""
MAX_DATA: Final = 32 * 1024
"""Largest DATA payload towards the listener. Its reader is aiohttp's, which slows down badly on
messages much larger than its 64 KiB read buffer (1 GiB through one socket: ~850 MB/s in
16-32 KiB messages, ~150 MB/s in 4 MiB ones), so bulk data moves as many moderate messages."""
MAX_DATA_TO_ROUTER: Final = 256 * 1024
"""Largest DATA payload towards the router, whose own WebSocket reader takes any size at one
copy: one message per upstream read (asyncio reads at most 256 KiB)."""
BATCH_BYTES: Final = MAX_DATA + HEADER.size
"""Small frames queued together are sent as one message up to this size."""


def encode(kind: int, stream_id: int, payload: bytes = b"") -> bytes:
    return HEADER.pack(kind, stream_id, len(payload)) + payload


def decode(message: bytes | bytearray) -> Iterator[tuple[int, int, memoryview]]:
    """The frames of one message; raise :class:`TunnelError` on any malformed frame."""
    view = memoryview(message)
    offset, end = 0, len(view)
    while offset < end:
        if end - offset < HEADER.size:
            raise TunnelError("truncated frame header")
        kind, stream_id, length = HEADER.unpack_from(view, offset)
        offset += HEADER.size
        if kind not in KINDS:
            raise TunnelError(f"unknown frame kind {kind}")
        if length > end - offset:
            raise TunnelError("truncated frame payload")
        yield kind, stream_id, view[offset:offset + length]
        offset += length


class Sink(Protocol):
    """The local end of a stream: the router's client connection or the listener's upstream."""

    def stream_data(self, data: memoryview) -> None:
        """Bytes from the peer; call ``Stream.consumed(n)`` once they have moved on."""

    def stream_eof(self) -> None:
        """The peer sends no more bytes."""

    def stream_closed(self, reason: str) -> None:
        """The stream is over (peer CLOSE, tunnel loss); drop the local end."""

    def stream_writable(self) -> None:
        """Credit came back after ``Stream.write`` returned False: resume reading the source."""


class Outbox:
    """Frames waiting for the WebSocket. Either one pump task per tunnel drains it in batches
    (:meth:`pump`, the listener over aiohttp), or the owner sets ``on_put`` and drains it with
    :meth:`take` (the router's own WebSocket, once per event-loop round)."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._size = 0
        self._wake = asyncio.Event()
        self.closed = False
        self.on_put: Callable[[], None] | None = None
        self.batch_bytes = BATCH_BYTES

    def put(self, frame: bytes) -> None:
        if self.closed:
            return
        self._parts.append(frame)
        self._size += len(frame)
        if self.on_put is not None:
            self.on_put()
        elif not self._wake.is_set():
            self._wake.set()

    def take(self) -> list[bytes]:
        parts, self._parts, self._size = self._parts, [], 0
        return parts

    @property
    def size(self) -> int:
        return self._size

    def close(self) -> None:
        self.closed = True
        self._wake.set()

    async def pump(self, send: Callable[[bytes], Awaitable[None]]) -> None:
        """Send queued frames until :meth:`close`; batches small frames into one message."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self.closed:
                return
            parts = self.take()
            batch: list[bytes] = []
            batch_size = 0
            for part in parts:
                if batch and batch_size + len(part) > self.batch_bytes:
                    await send(b"".join(batch) if len(batch) > 1 else batch[0])
                    batch, batch_size = [], 0
                batch.append(part)
                batch_size += len(part)
            if batch:
                await send(b"".join(batch) if len(batch) > 1 else batch[0])


class Stream:
    """One multiplexed byte stream with credit-based flow control in both directions."""

    __slots__ = ("_owed", "_pending", "allowance", "closed", "credit", "eof_received",
                 "eof_sent", "id", "mux", "sink")

    def __init__(self, mux: Mux, stream_id: int, sink: Sink) -> None:
        self.mux = mux
        self.id = stream_id
        self.sink = sink
        self.credit = mux.window
        self.allowance = mux.window
        """Bytes the peer may still send us: a peer that ignores its credit is cut off."""
        self._pending: bytes = b""
        self._owed = 0
        self.eof_sent = False
        self.eof_received = False
        self.closed = False

    def write(self, data: bytes | memoryview) -> bool:
        """Send bytes as credit allows; False: the caller must pause its source until
        ``Sink.stream_writable``. Bytes beyond the credit are kept (one read's worth at most)."""
        if self.closed or self.eof_sent:
            return True
        return self._send(data)

    def _send(self, data: bytes | memoryview) -> bool:
        if self._pending:
            self._pending += bytes(data)
            return False
        size = len(data)
        sendable = min(size, self.credit)
        if sendable:
            put = self.mux.outbox.put
            max_data = self.mux.max_data
            if sendable <= max_data:
                put(HEADER.pack(DATA, self.id, sendable) + data[:sendable])
            else:
                view = memoryview(data)
                for start in range(0, sendable, max_data):
                    piece = view[start:min(start + max_data, sendable)]
                    put(HEADER.pack(DATA, self.id, len(piece)) + piece)
            self.credit -= sendable
        if sendable == size:
            return True
        self._pending = bytes(data[sendable:])
        return False

    @property
    def blocked(self) -> bool:
        return bool(self._pending)

    def write_eof(self) -> None:
        if self.closed or self.eof_sent:
            return
        self.eof_sent = True
        if not self._pending:
            self.mux.outbox.put(HEADER.pack(EOF, self.id, 0))

    def consumed(self, size: int) -> None:
        """The sink has passed ``size`` received bytes on; grant credit in batches."""
        if self.closed:
            return
        self._owed += size
        if self._owed * 4 >= self.mux.window:
            self.allowance += self._owed
            self.mux.outbox.put(encode(WINDOW, self.id, CREDIT.pack(self._owed)))
            self._owed = 0

    def close(self, reason: str = "") -> None:
        """End the stream from this side: the peer gets CLOSE, the sink is not told."""
        if self.closed:
            return
        self.closed = True
        self.mux.forget(self)
        self.mux.outbox.put(encode(CLOSE, self.id, reason.encode()[:200]))

    def _granted(self, size: int) -> None:
        self.credit += size
        if self._pending:
            pending, self._pending = self._pending, b""
            if self._send(pending) and not self.closed:
                if self.eof_sent:
                    self.mux.outbox.put(HEADER.pack(EOF, self.id, 0))
                self.sink.stream_writable()

    def _peer_closed(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self.mux.forget(self)
        self.sink.stream_closed(reason)


class Mux:
    """The streams of one tunnel, over a WebSocket whose sending is the :class:`Outbox`'s pump.

    ``on_open(stream_id, first_bytes)`` (listener side) must return the new stream's
    :class:`Sink`-bound :class:`Stream` via :meth:`accept`; the router opens streams with
    :meth:`open`.
    """

    def __init__(self, *, window: int = DEFAULT_WINDOW, max_streams: int = 1000,
                 on_open: Callable[[int, memoryview], None] | None = None,
                 on_token: Callable[[str], None] | None = None,
                 max_data: int = MAX_DATA) -> None:
        self.window = window
        self.max_streams = max_streams
        self.max_data = max_data
        self.on_token = on_token
        """Router side: a renewed tunnel token came (``TOKEN``)."""
        self.outbox = Outbox()
        self.outbox.batch_bytes = max(BATCH_BYTES, max_data + HEADER.size)
        self.streams: dict[int, Stream] = {}
        self.on_open = on_open
        self._next_id = 1
        self.closed = False

    def open(self, sink: Sink, first: bytes = b"") -> Stream | None:
        """A new stream with ``first`` as its first bytes; None when at ``max_streams``."""
        if self.closed or len(self.streams) >= self.max_streams:
            return None
        stream_id = self._next_id
        self._next_id = (self._next_id + 1) & 0xFFFFFFFF or 1
        stream = Stream(self, stream_id, sink)
        self.streams[stream_id] = stream
        stream.credit -= len(first)  # the peer counts OPEN's bytes against our window
        self.outbox.put(HEADER.pack(OPEN, stream_id, len(first)) + first)
        return stream

    def accept(self, stream_id: int, sink: Sink) -> Stream:
        stream = Stream(self, stream_id, sink)
        self.streams[stream_id] = stream
        return stream

    def forget(self, stream: Stream) -> None:
        self.streams.pop(stream.id, None)

    def send_token(self, token: str) -> None:
        """Listener side: hand the router a renewed tunnel token."""
        self.outbox.put(encode(TOKEN, 0, token.encode("ascii")))

    def feed(self, message: bytes | bytearray) -> None:  # noqa: PLR0912 - one branch per frame kind
        """Dispatch one received message; raise :class:`TunnelError` if the peer misbehaves."""
        for kind, stream_id, payload in decode(message):
            stream = self.streams.get(stream_id)
            if kind == DATA:
                if stream is not None:
                    stream.allowance -= len(payload)
                    if stream.allowance < 0:
                        raise TunnelError(f"stream {stream_id} sent beyond its window")
                    stream.sink.stream_data(payload)
            elif kind == WINDOW:
                if len(payload) != CREDIT.size:
                    raise TunnelError("bad WINDOW frame")
                if stream is not None:
                    granted = CREDIT.unpack(payload)[0]
                    if stream.credit + granted > self.window:
                        # More than we ever sent: the peer would let us buffer without end.
                        raise TunnelError(f"stream {stream_id} granted beyond its window")
                    stream._granted(granted)
            elif kind == EOF:
                if stream is not None and not stream.eof_received:
                    stream.eof_received = True
                    stream.sink.stream_eof()
            elif kind == CLOSE:
                if stream is not None:
                    stream._peer_closed(bytes(payload).decode(errors="replace"))
            elif kind == TOKEN:
                if self.on_token is None or stream_id or len(payload) > MAX_TOKEN_BYTES:
                    raise TunnelError("unexpected TOKEN frame")
                self.on_token(bytes(payload).decode("ascii", errors="replace"))
            elif kind == OPEN:
                if self.on_open is None or stream is not None:
                    raise TunnelError(f"unexpected OPEN for stream {stream_id}")
                if len(self.streams) >= self.max_streams:
                    self.outbox.put(encode(CLOSE, stream_id, b"too many streams"))
                    continue
                if len(payload) > self.window:
                    raise TunnelError(f"stream {stream_id} opened beyond its window")
                self.on_open(stream_id, payload)
                opened = self.streams.get(stream_id)
                if opened is not None:
                    opened.allowance -= len(payload)

    def close(self, reason: str) -> None:
        """The tunnel is gone: every stream's sink hears ``stream_closed``."""
        if self.closed:
            return
        self.closed = True
        self.outbox.close()
        for stream in list(self.streams.values()):
            stream._peer_closed(reason)
        self.streams.clear()


class WebSocketLike(Protocol):
    """What :func:`serve` needs of aiohttp's server and client WebSockets (3.8 and later)."""

    @property
    def closed(self) -> bool: ...

    def __aiter__(self) -> Any: ...

    async def send_bytes(self, data: bytes) -> None: ...

    async def close(self, *, code: int = ..., message: bytes = ...) -> Any: ...


WS_BINARY: Final = 0x2
"""aiohttp's ``WSMsgType.BINARY`` (an IntEnum), named here so this module needs no aiohttp."""
CLOSE_PROTOCOL_ERROR: Final = 4002


async def serve(ws: WebSocketLike, mux: Mux) -> str:
    """Carry ``mux`` over ``ws`` until either ends; close both; return why it ended."""
    pump = asyncio.ensure_future(mux.outbox.pump(ws.send_bytes))
    reason = "tunnel closed"
    receive = asyncio.ensure_future(_receive(ws, mux))
    try:
        done, _ = await asyncio.wait({pump, receive}, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            error = task.exception()
            if isinstance(error, TunnelError):
                reason = f"protocol error: {error}"
                await ws.close(code=CLOSE_PROTOCOL_ERROR, message=str(error).encode()[:120])
            elif error is not None:
                reason = f"tunnel failed: {error!r}"
    finally:
        mux.close(reason)
        for task in (pump, receive):
            task.cancel()
        await asyncio.gather(pump, receive, return_exceptions=True)
        if not ws.closed:
            await ws.close()
    return reason


async def _receive(ws: WebSocketLike, mux: Mux) -> None:
    async for message in ws:
        if message.type == WS_BINARY:
            mux.feed(message.data)
