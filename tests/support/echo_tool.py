"""An echo tool that writes the way many real tools do, for the latency bench and its tests.

    python -m tests.support.echo_tool HOST PORT      (prints "listening <port>" once it accepts)

Real tools leave Nagle's algorithm on (tornado, behind Jupyter, turns ``TCP_NODELAY`` off again
once the WebSocket handshake is done) and answer one message with several small writes (a
kernel answers ``execute_request`` with ``status: busy``, ``execute_input``, ``execute_reply``
and ``status: idle``). With Nagle on, each write after the first waits until the peer has
acknowledged the one before; a peer that delays its ACKs (Linux: 40 ms) delays the whole
answer. This tool reproduces exactly that, so a path that holds its ACKs shows it:

- ``GET <any path>``: ``200`` with a short body, head and body in two writes (keep-alive);
- ``GET /ws`` with ``Upgrade: websocket``: for every text or binary message, ``REPLIES``
  messages (``busy``, ``echo: <text>``, ``idle``), one write each; a close is answered.

Plain asyncio, no aiohttp: it has no opinion of its own on socket options.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import socket
import struct
import sys
from typing import Final

REPLIES: Final = 3
HTTP_BODY: Final = b"hello from the echo tool\n"
GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MAX_HEAD: Final = 64 * 1024


def frame(opcode: int, payload: bytes) -> bytes:
    """An unmasked (server) frame."""
    size = len(payload)
    if size < 126:
        return bytes((0x80 | opcode, size)) + payload
    if size < 1 << 16:
        return bytes((0x80 | opcode, 126)) + struct.pack("!H", size) + payload
    return bytes((0x80 | opcode, 127)) + struct.pack("!Q", size) + payload


def nagle_on(transport: asyncio.BaseTransport) -> None:
    """What tornado does after a handshake: asyncio sets TCP_NODELAY, we clear it again."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 0)


class EchoConnection(asyncio.Protocol):
    """One client connection; ``replies`` messages (at least two) answer each message."""

    def __init__(self, replies: int = REPLIES) -> None:
        self.replies = replies
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.websocket = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        nagle_on(transport)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.websocket:
            self._frames()
        else:
            self._requests()

    def _requests(self) -> None:
        assert self.transport is not None
        while not self.websocket:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > MAX_HEAD:
                    self.transport.close()
                return
            head, self.buf = bytes(self.buf[:end]), self.buf[end + 4:]
            lines = head.decode("latin-1").split("\r\n")
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length", "0"))
            if length > len(self.buf):
                return  # the bench sends no bodies; a body arriving later is not supported
            del self.buf[:length]
            if headers.get("upgrade", "").lower() == "websocket":
                key = headers.get("sec-websocket-key", "").encode()
                accept = base64.b64encode(hashlib.sha1(key + GUID).digest())  # noqa: S324
                self.transport.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                                     b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept
                                     + b"\r\n\r\n")
                self.websocket = True
                self._frames()
                return
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                                 b"Content-Length: %d\r\n\r\n" % len(HTTP_BODY))
            self.transport.write(HTTP_BODY)

    def _frames(self) -> None:
        assert self.transport is not None
        while len(self.buf) >= 2:
            first, second = self.buf[0], self.buf[1]
            size, pos = second & 0x7F, 2
            if size == 126:
                if len(self.buf) < 4:
                    return
                size, pos = struct.unpack_from("!H", self.buf, 2)[0], 4
            elif size == 127:
                if len(self.buf) < 10:
                    return
                size, pos = struct.unpack_from("!Q", self.buf, 2)[0], 10
            mask = b""
            if second & 0x80:
                mask, pos = bytes(self.buf[pos:pos + 4]), pos + 4
            if len(self.buf) < pos + size:
                return
            payload = bytearray(self.buf[pos:pos + size])
            del self.buf[:pos + size]
            if mask:
                for i in range(size):
                    payload[i] ^= mask[i % 4]
            self._message(first & 0x0F, bytes(payload))

    def _message(self, opcode: int, payload: bytes) -> None:
        assert self.transport is not None
        if opcode == 0x8:
            self.transport.write(frame(0x8, payload[:2]))
            self.transport.close()
        elif opcode == 0x9:
            self.transport.write(frame(0xA, payload))
        elif opcode in (0x1, 0x2):
            self.transport.write(frame(0x1, b"busy"))
            self.transport.write(frame(opcode, b"echo: " + payload))
            for _ in range(self.replies - 2):
                self.transport.write(frame(0x1, b"idle"))


async def serve(host: str, port: int, replies: int = REPLIES,
                connections: list[EchoConnection] | None = None) -> asyncio.Server:
    """Listen on ``host:port``; each new connection is appended to ``connections`` (tests)."""
    def accept() -> EchoConnection:
        connection = EchoConnection(replies)
        if connections is not None:
            connections.append(connection)
        return connection

    loop = asyncio.get_running_loop()
    return await loop.create_server(accept, host, port)


async def main(host: str, port: int) -> None:
    server = await serve(host, port)
    print("listening", server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
