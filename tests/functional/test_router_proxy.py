"""The router, a listener link and an upstream on loopback: plain HTTP through the tunnel."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator

import aiohttp

from edge_router import testing
from tests.functional.router_stack import HOST, Stack, stack, upstream

__all__ = ["stack", "upstream"]


async def test_plain_request_goes_through_the_tunnel(stack: Stack) -> None:
    async with await stack.get("/") as response:
        assert response.status == 200
        assert await response.text() == "hello from the tool\n"


async def test_keep_alive_requests_reuse_one_connection(stack: Stack) -> None:
    before = stack.router.stats.connections
    for _ in range(20):
        async with await stack.get("/") as response:
            assert await response.text() == "hello from the tool\n"
    assert stack.router.stats.connections == before + 1


async def test_forwarded_headers_are_ours_and_hop_by_hop_ones_are_gone(stack: Stack) -> None:
    sent = {"X-Forwarded-For": "6.6.6.6", "Keep-Alive": "timeout=5",
            "Connection": "keep-alive, X-Secret", "X-Secret": "drop me", "X-Kept": "yes"}
    async with await stack.get("/headers", HOST + ":8080", sent) as response:
        seen = await response.json()
    assert seen["X-Forwarded-For"] == "127.0.0.1"
    assert seen["X-Forwarded-Proto"] == "http"
    assert seen["X-Forwarded-Host"] == HOST + ":8080"
    assert "Keep-Alive" not in seen and "X-Secret" not in seen
    assert seen["X-Kept"] == "yes"


async def test_unknown_host_gets_404(stack: Stack) -> None:
    for host in ("nope." + testing.DOMAIN, "example.org", testing.DOMAIN, "a.b." + testing.DOMAIN):
        async with await stack.get("/", host=host) as response:
            assert response.status == 404
            assert "no instance" in await response.text()


async def test_known_instance_without_tunnel_gets_503(stack: Stack) -> None:
    await stack.links.close()
    for _ in range(100):
        if stack.router.routes.lookup(HOST) is None:
            break
        await asyncio.sleep(0.05)
    async with await stack.get("/") as response:
        assert response.status == 503
        assert "starting or offline" in await response.text()


async def test_upstream_down_gets_502(stack: Stack, upstream: tuple[str, int]) -> None:
    links = testing.Links()
    other = "down1"
    await links.start([testing.tunnel_url(stack.router)],
                      token=testing.token(stack.key, other), hostname=f"{other}.{testing.DOMAIN}",
                      upstream=("127.0.0.1", 1))
    try:
        async with await stack.get("/", host=f"{other}.{testing.DOMAIN}") as response:
            assert response.status == 502
    finally:
        await links.close()


async def test_streamed_100mb_upload_and_download(stack: Stack) -> None:
    size = 100 * 1024 * 1024
    block = bytes(range(256)) * 4096

    async def body() -> AsyncIterator[bytes]:
        for _ in range(size // len(block)):
            yield block

    expected = hashlib.sha256(block * (size // len(block))).hexdigest()
    digest = hashlib.sha256()
    received = 0
    async with stack.client.post(stack.base + "/echo", data=body(),
                                 headers={"Host": HOST}) as response:
        assert response.status == 200
        async for chunk in response.content.iter_chunked(1 << 20):
            digest.update(chunk)
            received += len(chunk)
    assert received == size
    assert digest.hexdigest() == expected

    received = 0
    async with await stack.get(f"/bytes/{size}") as response:
        assert response.headers["Content-Length"] == str(size)
        async for chunk in response.content.iter_chunked(1 << 20):
            received += len(chunk)
    assert received == size


async def test_websocket_echo_through_the_tunnel(stack: Stack) -> None:
    async with stack.client.ws_connect(stack.base + "/ws", headers={"Host": HOST}) as ws:
        for i in range(20):
            await ws.send_str(f"message {i}")
            assert (await ws.receive_str(timeout=5)) == f"message {i}"
        await ws.send_bytes(b"\x00" * 300_000)
        assert len(await ws.receive_bytes(timeout=5)) == 300_000


async def test_100_concurrent_streams_over_one_tunnel(stack: Stack) -> None:
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as client:
        async def one(i: int) -> str:
            async with client.get(stack.base + "/sleep/0.2", headers={"Host": HOST}) as r:
                return await r.text()
        results = await asyncio.gather(*(one(i) for i in range(100)))
    assert results == ["slept\n"] * 100
