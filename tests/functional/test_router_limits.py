"""Bad and slow clients get a clean error; the router keeps serving everyone else."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from edge_router.proxy import ClientConnection
from protocol.tunnel import DEFAULT_WINDOW
from tests.support import router as harness
from tests.support.router_stack import HOST, Stack, serve_stack, stack, upstream

__all__ = ["stack", "upstream"]


async def raw(stack: Stack, data: bytes, *, read: bool = True) -> bytes:
    """Send raw bytes to the router; the whole answer until it closes (10 s at most)."""
    host, port = stack.router.addresses[0]
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 10) if read else b""
    finally:
        writer.close()
        await writer.wait_closed()


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


async def still_serving(stack: Stack) -> None:
    async with await stack.get("/") as response:
        assert response.status == 200


@pytest.mark.parametrize("request_bytes", [
    b"GARBAGE\r\n\r\n",
    b"GET / HTTP/1.1\r\n\r\n",  # no Host
    b"GET / HTTP/2.0\r\nHost: " + HOST.encode() + b"\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: " + HOST.encode() + b"\r\nBad Header: x\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: " + HOST.encode() + b"\r\nContent-Length: 5\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n",  # smuggling
    b"POST / HTTP/1.1\r\nHost: " + HOST.encode() + b"\r\nContent-Length: -1\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: " + HOST.encode() + b"\r\nTransfer-Encoding: gzip\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
])
async def test_malformed_requests_get_400(stack: Stack, request_bytes: bytes) -> None:
    assert status_of(await raw(stack, request_bytes)) == 400
    await still_serving(stack)


async def test_oversized_head_gets_431(stack: Stack) -> None:
    big = b"GET / HTTP/1.1\r\nHost: " + HOST.encode() + b"\r\nX-Big: " + b"a" * 40000 + b"\r\n\r\n"
    assert status_of(await raw(stack, big)) == 431
    await still_serving(stack)


async def test_a_second_host_on_one_connection_gets_its_own_stream(stack: Stack) -> None:
    links = harness.Links()
    other = f"other2.{harness.DOMAIN}"
    await links.start([harness.tunnel_url(stack.router)],
                      token=harness.token(stack.key, "other2"), hostname=other,
                      upstream=stack.upstream)
    try:
        answer = await raw(stack, (
            f"GET /headers HTTP/1.1\r\nHost: {HOST}\r\n\r\n"
            f"GET /headers HTTP/1.1\r\nHost: {other}\r\nConnection: close\r\n\r\n").encode())
        first, second = answer.split(b"HTTP/1.1 200 OK")[1:]
        assert f'"X-Forwarded-Host": "{HOST}"'.encode() in first
        assert f'"X-Forwarded-Host": "{other}"'.encode() in second
        assert stack.router.routes.lookup(HOST).mux.streams == {}  # type: ignore[union-attr]
    finally:
        await links.close()


async def test_chunked_and_pipelined_requests(stack: Stack) -> None:
    body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
    answer = await raw(stack, (
        f"POST /echo HTTP/1.1\r\nHost: {HOST}\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
        + body + f"GET / HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode()))
    assert answer.count(b"HTTP/1.1 200 OK") == 2
    assert b"hello world" in answer.replace(b"\r\n6\r\n", b"")
    assert answer.endswith(b"hello from the tool\n")


@pytest.fixture
async def strict(upstream: tuple[str, int]) -> AsyncIterator[Stack]:
    async with serve_stack(upstream, header_timeout=0.5, idle_timeout=0.5, read_timeout=1.0,
                           max_streams=3) as made:
        yield made


async def test_slow_head_gets_408_and_idle_connections_close(strict: Stack) -> None:
    host, port = strict.router.addresses[0]
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b"GET / HTTP/1.1\r\n")  # and then nothing: slowloris
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert status_of(answer) == 408
    reader, writer = await asyncio.open_connection(host, port)
    assert await asyncio.wait_for(reader.read(), 5) == b""  # idle: closed without a word
    writer.close()
    await still_serving(strict)


async def test_an_upstream_that_never_answers_gets_504(strict: Stack) -> None:
    async with await strict.get("/sleep/3") as response:
        assert response.status == 504


async def test_streams_over_the_limit_get_503(strict: Stack) -> None:
    host, port = strict.router.addresses[0]
    held = [await asyncio.open_connection(host, port) for _ in range(3)]
    for _, writer in held:
        writer.write(f"GET /sleep/0.8 HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
    await asyncio.sleep(0.2)
    answer = await raw(strict, f"GET / HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
    assert status_of(answer) == 503
    for reader, writer in held:
        assert b"slept" in await asyncio.wait_for(reader.read(1000), 5)
        writer.close()


async def test_a_slow_reader_stalls_neither_others_nor_router_memory(stack: Stack) -> None:
    host, port = stack.router.addresses[0]
    reader, writer = await asyncio.open_connection(host, port, limit=1024)
    writer.write(f"GET /bytes/{1 << 30} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
    await reader.read(100)  # the download has started; now read nothing more
    await asyncio.sleep(0.5)
    tunnel = stack.router.routes.lookup(HOST)
    assert tunnel is not None
    for _ in range(30):
        async with await stack.get("/") as response:
            assert await response.text() == "hello from the tool\n"
    await asyncio.sleep(0.3)
    window = DEFAULT_WINDOW
    buffered = sum(c.transport.get_write_buffer_size() for c in stack.router_connections()
                   if isinstance(c, ClientConnection) and c.transport is not None)
    assert buffered <= window + 256 * 1024, buffered
    assert tunnel.mux.outbox.size <= window
    writer.close()
