"""The server end of a tunnel's WebSocket (RFC 6455), lean enough for 10,000 idle tunnels and
bulk data at memory speed.

After the handshake (``edge_router.tunnels``) the socket's protocol becomes a
:class:`TunnelSocket`: frames are parsed in ``data_received`` and binary messages go straight
into the tunnel's :class:`protocol.tunnel.Mux`; what the mux queues is written once per event-loop
round as unmasked server frames. No task, no queue, no message object per frame: aiohttp's
``WebSocketResponse`` costs two tasks per tunnel and four copies per byte on this path.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import struct
import time
from collections.abc import Callable
from typing import Final

from protocol.errors import TunnelError
from protocol.tunnel import BATCH_BYTES, MAX_MESSAGE_BYTES, Mux

_c_mask: Callable[[bytes, bytearray], None] | None
try:  # aiohttp's C masking (the router always runs on the virtualenv's aiohttp)
    from aiohttp._websocket.helpers import websocket_mask as _c_mask
except ImportError:  # pragma: no cover - a fallback for other aiohttp builds
    _c_mask = None

log = logging.getLogger("dit4c.router.websocket")

GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
CLOSE_NORMAL, CLOSE_GOING_AWAY, CLOSE_PROTOCOL, CLOSE_TOO_BIG = 1000, 1001, 1002, 1009
CLOSE_POLICY: Final = 4003
_U16 = struct.Struct("!H")
_U64 = struct.Struct("!Q")


def accept_key(key: bytes) -> bytes:
    """``Sec-WebSocket-Accept`` for a client's ``Sec-WebSocket-Key``."""
    return base64.b64encode(hashlib.sha1(key + GUID).digest())  # noqa: S324 - RFC 6455


def unmask(mask: bytes, payload: bytearray) -> None:
    if _c_mask is not None:
        _c_mask(mask, payload)
        return
    size = len(payload)
    key = int.from_bytes(mask * (size // 4 + 1), "little") & ((1 << (8 * size)) - 1)
    payload[:] = (int.from_bytes(payload, "little") ^ key).to_bytes(size, "little")


def frame_header(opcode: int, size: int) -> bytes:
    if size < 126:
        return bytes((0x80 | opcode, size))
    if size < 1 << 16:
        return bytes((0x80 | opcode, 126)) + _U16.pack(size)
    return bytes((0x80 | opcode, 127)) + _U64.pack(size)


class TunnelSocket(asyncio.Protocol):
    """A tunnel's WebSocket after the handshake; ends the mux when it ends, and vice versa."""

    def __init__(self, mux: Mux, on_closed: Callable[[str], None], *,
                 heartbeat: float) -> None:
        self.mux = mux
        self.on_closed = on_closed
        self.heartbeat = heartbeat
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_running_loop()
        self._chunks: list[bytes] = []
        self._have = 0
        self._need = 0
        """Bytes the incomplete frame at the start of ``_chunks`` needs in all."""
        self._pending_frame: tuple[int, bytes, int, int] | None = None
        """(first byte, mask, header length, payload size) of that frame, once known."""
        self._fragments: list[bytes] = []
        self._flush_scheduled = False
        self._closing = False
        self.last_received = self.last_ping = time.monotonic()
        mux.outbox.on_put = self._flush_soon

    # --- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.mux.close("tunnel connection lost")
        self.on_closed("connection lost" if exc is None else f"connection lost: {exc}")

    def data_received(self, data: bytes) -> None:
        self.last_received = time.monotonic()
        try:
            if self._chunks:
                # A large frame arrives in many reads: collect them, then copy its payload
                # out once, instead of re-copying the growing prefix on every read.
                self._chunks.append(data)
                self._have += len(data)
                if self._have < self._need:
                    return
                data = self._complete_pending()
            used = self._frames(data)
        except TunnelError as exc:
            log.warning("tunnel protocol error: %s", exc)
            self.close(CLOSE_PROTOCOL, str(exc))
            return
        if used < len(data):
            rest = data[used:]
            self._chunks.append(rest)
            self._have = len(rest)

    def eof_received(self) -> bool:
        return False

    # --- frames in -------------------------------------------------------------------------

    def _complete_pending(self) -> bytes:
        """The buffered bytes, or — when they hold a whole large frame whose header was
        parsed — that frame handled straight from the chunks and the bytes after it."""
        chunks, self._chunks = self._chunks, []
        frame = self._pending_frame
        if frame is None:
            return b"".join(chunks)
        self._pending_frame = None
        first, mask, offset, size = frame
        payload = bytearray(size)
        filled = 0
        rest: list[bytes | memoryview] = []
        for chunk in chunks:
            view = memoryview(chunk)
            if offset >= len(view):
                offset -= len(view)
                continue
            take = view[offset:offset + size - filled]
            payload[filled:filled + len(take)] = take
            filled += len(take)
            if offset + len(take) < len(view):
                rest.append(view[offset + len(take):])
            offset = 0
        unmask(mask, payload)
        self._frame(first, payload)
        return b"".join(rest)

    def _frames(self, data: bytes) -> int:
        """Handle every complete frame in ``data``; return how many bytes were used."""
        pos, end = 0, len(data)
        self._need = 0  # until a frame's full size is known, any new byte may complete it
        while end - pos >= 2 and not self._closing:
            first, second = data[pos], data[pos + 1]
            size = second & 0x7F
            header = 2
            if size == 126:
                if end - pos < 4:
                    break
                size = _U16.unpack_from(data, pos + 2)[0]
                header = 4
            elif size == 127:
                if end - pos < 10:
                    break
                size = _U64.unpack_from(data, pos + 2)[0]
                header = 10
            if not second & 0x80:
                raise TunnelError("client frames must be masked")
            if first & 0x70:
                raise TunnelError("reserved bits set (no extensions were negotiated)")
            if size > MAX_MESSAGE_BYTES:
                raise TunnelError("frame too large")
            start = pos + header + 4
            if end - start < size:
                if end - start >= 0:
                    self._pending_frame = (first, data[start - 4:start], header + 4, size)
                self._need = header + 4 + size
                break
            payload = bytearray(memoryview(data)[start:start + size])  # the one copy
            unmask(data[start - 4:start], payload)
            pos = start + size
            self._frame(first, payload)
        return pos

    def _frame(self, first: int, payload: bytearray) -> None:
        opcode, fin = first & 0x0F, first & 0x80
        if opcode == BINARY or (opcode == CONTINUATION and self._fragments):
            if not fin or self._fragments:
                self._fragments.append(bytes(payload))
                if sum(map(len, self._fragments)) > MAX_MESSAGE_BYTES:
                    raise TunnelError("message too large")
                if not fin:
                    return
                payload = bytearray(b"".join(self._fragments))
                self._fragments.clear()
            self.mux.feed(payload)
        elif opcode == PING:
            # Answer only while the peer reads what we send: pings cannot make us buffer.
            if self.transport is not None and self.transport.get_write_buffer_size() < 65536:
                self._send(PONG, bytes(payload))
        elif opcode == PONG:
            pass
        elif opcode == CLOSE:
            self.close(CLOSE_NORMAL, "closed by the listener")
        else:
            raise TunnelError(f"unexpected opcode {opcode}")

    # --- frames out ------------------------------------------------------------------------

    def _send(self, opcode: int, payload: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(frame_header(opcode, len(payload)) + payload)

    def _flush_soon(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        """Everything the mux queued this round, as few binary messages as fit the batch."""
        self._flush_scheduled = False
        parts = self.mux.outbox.take()
        if not parts or self.transport is None or self.transport.is_closing():
            return
        out: list[bytes] = []
        batch: list[bytes] = []
        batch_size = 0
        for part in parts:
            if batch and batch_size + len(part) > BATCH_BYTES:
                out += (frame_header(BINARY, batch_size), *batch)
                batch, batch_size = [], 0
            batch.append(part)
            batch_size += len(part)
        if batch:
            out += (frame_header(BINARY, batch_size), *batch)
        self.transport.write(b"".join(out))

    # --- lifecycle -------------------------------------------------------------------------

    def check(self, now: float) -> None:
        """Heartbeat, called about once a second: ping; drop a peer silent for two periods."""
        if self._closing:
            return
        if now - self.last_received > 2 * self.heartbeat:
            log.info("tunnel peer silent for %.0f s: dropping it", now - self.last_received)
            self.abort("heartbeat timeout")
        elif now - self.last_ping >= self.heartbeat:
            self.last_ping = now
            self._send(PING, b"")

    def close(self, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        if self._closing:
            return
        self._closing = True
        self.mux.close(reason or "tunnel closed")
        self._flush()
        self._send(CLOSE, _U16.pack(code) + reason.encode()[:120])
        if self.transport is not None:
            self.transport.close()

    def abort(self, reason: str) -> None:
        self._closing = True
        self.mux.close(reason)
        if self.transport is not None:
            self.transport.abort()
