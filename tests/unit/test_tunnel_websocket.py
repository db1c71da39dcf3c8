"""The router's server-side WebSocket framing for tunnels (edge_router.websocket)."""

from __future__ import annotations

import asyncio
import os
import struct

import pytest

from edge_router import websocket
from edge_router.websocket import BINARY, CLOSE, PING, PONG, TunnelSocket
from protocol import tunnel
from protocol.tunnel import Mux


class FakeTransport(asyncio.Transport):
    """Collects what is written; records close/abort."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closed

    def get_write_buffer_size(self) -> int:
        return 0

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True


def client_frame(opcode: int, payload: bytes, *, fin: bool = True, masked: bool = True) -> bytes:
    size = len(payload)
    first = (0x80 if fin else 0) | opcode
    if size < 126:
        head = bytes((first, (0x80 if masked else 0) | size))
    elif size < 1 << 16:
        head = bytes((first, (0x80 if masked else 0) | 126)) + struct.pack("!H", size)
    else:
        head = bytes((first, (0x80 if masked else 0) | 127)) + struct.pack("!Q", size)
    if not masked:
        return head + payload
    mask = os.urandom(4)
    body = bytearray(payload)
    websocket.unmask(mask, body)
    return head + mask + bytes(body)


def server_frames(data: bytes) -> list[tuple[int, bytes]]:
    frames, pos = [], 0
    while pos < len(data):
        opcode, size = data[pos] & 0x0F, data[pos + 1] & 0x7F
        pos += 2
        if size == 126:
            size = struct.unpack_from("!H", data, pos)[0]
            pos += 2
        elif size == 127:
            size = struct.unpack_from("!Q", data, pos)[0]
            pos += 8
        frames.append((opcode, bytes(data[pos:pos + size])))
        pos += size
    return frames


Pair = tuple[TunnelSocket, FakeTransport, list[tuple[int, bytes]]]


@pytest.fixture
async def socket_pair() -> Pair:
    opened: list[tuple[int, bytes]] = []
    mux = Mux(on_open=lambda sid, first: opened.append((sid, bytes(first))))
    sock = TunnelSocket(mux, lambda reason: None, heartbeat=1.0)
    transport = FakeTransport()
    sock.connection_made(transport)
    return sock, transport, opened


async def test_frames_split_anywhere_reach_the_mux(socket_pair: Pair) -> None:
    sock, _, opened = socket_pair
    big = os.urandom(300_000)
    data = (client_frame(BINARY, tunnel.encode(tunnel.OPEN, 1, b"small"))
            + client_frame(BINARY, tunnel.encode(tunnel.OPEN, 2, big))
            + client_frame(BINARY, tunnel.encode(tunnel.OPEN, 3)[:5], fin=False)
            + client_frame(0, tunnel.encode(tunnel.OPEN, 3)[5:]))
    for start in range(0, len(data), 7001):
        sock.data_received(data[start:start + 7001])
    assert opened == [(1, b"small"), (2, big), (3, b"")]


async def test_ping_gets_pong_and_close_is_answered(socket_pair: Pair) -> None:
    sock, transport, _ = socket_pair
    sock.data_received(client_frame(PING, b"hi"))
    assert server_frames(bytes(transport.written)) == [(PONG, b"hi")]
    transport.written.clear()
    sock.data_received(client_frame(CLOSE, struct.pack("!H", 1000)))
    assert server_frames(bytes(transport.written))[0][0] == CLOSE
    assert transport.closed and sock.mux.closed


@pytest.mark.parametrize("bad", [
    client_frame(BINARY, b"x", masked=False),
    client_frame(1, b"text"),
    bytes((0x82 | 0x40, 0x80 | 1)) + bytes(5),  # RSV1 without an extension
    bytes((0x82, 0x80 | 127)) + struct.pack("!Q", 1 << 40),
])
async def test_protocol_errors_close_the_tunnel(socket_pair: Pair, bad: bytes) -> None:
    sock, transport, _ = socket_pair
    sock.data_received(bad)
    assert transport.closed and sock.mux.closed
    code = struct.unpack("!H", server_frames(bytes(transport.written))[-1][1][:2])[0]
    assert code == websocket.CLOSE_PROTOCOL


async def test_queued_frames_go_out_as_binary_messages_once_per_round(socket_pair: Pair) -> None:
    sock, transport, _ = socket_pair
    for i in range(3):
        sock.mux.outbox.put(tunnel.encode(tunnel.DATA, i, b"abc"))
    assert transport.written == b""
    await asyncio.sleep(0)
    frames = server_frames(bytes(transport.written))
    assert [op for op, _ in frames] == [BINARY]
    assert [k for k, _, _ in tunnel.decode(frames[0][1])] == [tunnel.DATA] * 3


def test_accept_key_matches_rfc_6455_example() -> None:
    assert websocket.accept_key(b"dGhlIHNhbXBsZSBub25jZQ==") == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_pure_python_unmask_matches() -> None:
    payload = bytearray(os.urandom(1001))
    expected = bytes(b ^ b"\x01\x02\x03\x04"[i % 4] for i, b in enumerate(payload))
    saved, websocket._c_mask = websocket._c_mask, None
    try:
        websocket.unmask(b"\x01\x02\x03\x04", payload)
    finally:
        websocket._c_mask = saved
    assert bytes(payload) == expected
