"""One stream's TCP connection to the upstream (the auth helper) inside the pod."""

from __future__ import annotations

import asyncio
import logging
import socket

from protocol.tcp import quick_ack
from protocol.tunnel import Stream

log = logging.getLogger("dit4c.listener.upstream")

CONNECT_TIMEOUT = 10.0


class UpstreamConnection(asyncio.Protocol):
    """Pipes a tunnel stream to a TCP connection; bytes before the connect are held (the
    router's window bounds them) and credit is granted only for bytes the socket took."""

    def __init__(self) -> None:
        self.stream: Stream | None = None
        self.transport: asyncio.Transport | None = None
        self._sock: socket.socket | None = None
        self._held: list[bytes] = []
        self._eof_held = False
        self._write_paused = False
        self._unacked = 0
        self._closed = False

    # --- stream side (protocol.tunnel.Sink) -----------------------------------------------

    def stream_data(self, data: memoryview) -> None:
        if self.transport is None:
            self._held.append(bytes(data))
            return
        self.transport.write(data)
        self._ack(len(data))

    def _ack(self, size: int) -> None:
        if self._write_paused:
            self._unacked += size
        elif self.stream is not None:
            self.stream.consumed(size)

    def stream_eof(self) -> None:
        if self.transport is None:
            self._eof_held = True
        elif self.transport.can_write_eof():
            self.transport.write_eof()

    def stream_closed(self, reason: str) -> None:
        self._closed = True
        if self.transport is not None:
            self.transport.close()

    def stream_writable(self) -> None:
        if self.transport is not None and not self._closed:
            self.transport.resume_reading()

    # --- socket side (asyncio.Protocol) ----------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self._sock = transport.get_extra_info("socket")
        if self._closed:
            transport.close()
            return
        held, self._held = self._held, []
        for data in held:
            transport.write(data)
            self._ack(len(data))
        if self._eof_held and transport.can_write_eof():
            transport.write_eof()

    def data_received(self, data: bytes) -> None:
        # Before passing the bytes on: a tool with Nagle on holds its next write until this
        # read is acknowledged (protocol/tcp.py).
        quick_ack(self._sock)
        if self.stream is not None and not self.stream.write(data):
            assert self.transport is not None
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        if self.stream is not None:
            self.stream.write_eof()
        return True  # the request side may still be sending; the router ends the stream

    def connection_lost(self, exc: Exception | None) -> None:
        if self.stream is not None and not self.stream.closed:
            if exc is not None:
                self.stream.close(f"upstream connection failed: {exc}")
            else:
                self.stream.write_eof()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._unacked and self.stream is not None:
            self.stream.consumed(self._unacked)
        self._unacked = 0

    async def connect(self, host: str, port: int) -> None:
        """Open the TCP connection; on failure end the stream with the reason (router: 502)."""
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(
                loop.create_connection(lambda: self, host, port), CONNECT_TIMEOUT)
        except (TimeoutError, OSError) as exc:
            log.warning("cannot reach the upstream %s:%d: %s", host, port, exc)
            if self.stream is not None:
                self.stream.close(f"upstream unreachable: {exc}")
