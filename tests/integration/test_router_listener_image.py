"""The listener helper in the real helpers image (Debian's python3-aiohttp 3.8) holding a tunnel
to a router on the host, in front of an upstream that shares its network namespace, as in a pod.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from docker.models.networks import Network

from edge_router.server import Router
from protocol import pod
from protocol.tokens import SigningKey
from protocol.tunnel import TUNNEL_PATH
from tests.support import router as harness

pytestmark = pytest.mark.docker

INSTANCE = "pod1"
HOST = f"{INSTANCE}.{harness.DOMAIN}"
SIZE = 20 * 1024 * 1024

# The "tool": aiohttp 3.8 in the same image, hello + streamed bytes + WebSocket echo.
TOOL = """
import asyncio
from aiohttp import web
async def hello(request):
    return web.Response(text="hello from the pod\\n")
async def sized(request):
    size = int(request.match_info["n"])
    response = web.StreamResponse(headers={"Content-Length": str(size)})
    await response.prepare(request)
    block = b"z" * 65536
    while size > 0:
        await response.write(block[:min(size, 65536)])
        size -= 65536
    return response
async def echo(request):
    response = web.StreamResponse()
    response.enable_chunked_encoding()
    await response.prepare(request)
    async for chunk in request.content.iter_chunked(65536):
        await response.write(chunk)
    return response
async def ws(request):
    sock = web.WebSocketResponse()
    await sock.prepare(request)
    async for message in sock:
        await sock.send_str(message.data)
    return sock
app = web.Application()
app.router.add_get("/", hello)
app.router.add_get("/bytes/{n}", sized)
app.router.add_get("/ws", ws)
app.router.add_post("/echo", echo)
web.run_app(app, host="127.0.0.1", port=PORT, print=None)
""".replace("PORT", str(pod.AUTH_PORT))


def gateway(network: Network) -> str:
    network.reload()
    address: str = network.attrs["IPAM"]["Config"][0]["Gateway"]
    return address


class Routers:
    """The router on the host; a test may restart it (``restart``); all are stopped after."""

    def __init__(self, key: SigningKey, first: Router) -> None:
        self.key = key
        self.current = first
        self.made = [first]

    async def restart(self) -> None:
        await self.current.stop()
        self.current = await harness.start_router(self.key, listen=(self.current.addresses[0],))
        self.made.append(self.current)


@pytest.fixture
async def routers(docker_network: Network) -> AsyncIterator[Routers]:
    key = SigningKey.generate()
    made = Routers(key, await harness.start_router(key, listen=((gateway(docker_network), 0),)))
    yield made
    for router in made.made:
        await router.stop()


async def wait_until(check: Callable[[], Any], limit: float) -> None:
    start = time.monotonic()
    while not await check():
        assert time.monotonic() - start < limit, "not reachable in time"
        await asyncio.sleep(0.2)


@pytest.mark.timeout(120)
async def test_listener_in_the_helpers_image_serves_through_the_router(
        routers: Routers, helpers_image: str, run_container: Any) -> None:
    key = routers.key
    host, port = routers.current.addresses[0]
    tool = run_container(helpers_image, command=["python3", "-c", TOOL])
    run_container(
        helpers_image, command=["python3", "-m", "helpers.listener"],
        network=None, network_mode=f"container:{tool.id}",
        environment={
            pod.ENV_TUNNEL_TOKEN: harness.token(key, INSTANCE),
            pod.ENV_ROUTER_URLS: f"ws://{host}:{port}{TUNNEL_PATH}",
            pod.ENV_HOSTNAME: HOST,
            pod.ENV_UPSTREAM: f"127.0.0.1:{pod.AUTH_PORT}",
        })
    base = f"http://{host}:{port}"
    async with aiohttp.ClientSession() as client:
        async def up() -> bool:
            async with client.get(base + "/", headers={"Host": HOST}) as response:
                return response.status == 200 and await response.text() == "hello from the pod\n"
        await wait_until(up, 60)

        digest = hashlib.sha256()
        async with client.get(f"{base}/bytes/{SIZE}", headers={"Host": HOST}) as response:
            async for chunk in response.content.iter_chunked(1 << 20):
                digest.update(chunk)
        assert digest.hexdigest() == hashlib.sha256(b"z" * SIZE).hexdigest()

        async with client.ws_connect(base + "/ws", headers={"Host": HOST}) as ws:
            for i in range(5):
                await ws.send_str(f"ping {i}")
                assert await ws.receive_str(timeout=10) == f"ping {i}"

        upload = hashlib.sha256()
        echoed = hashlib.sha256()
        block = bytes(range(256)) * 256

        async def body() -> AsyncIterator[bytes]:
            for _ in range(SIZE // len(block)):
                upload.update(block)
                yield block
        async with client.post(f"{base}/echo", data=body(), headers={"Host": HOST}) as response:
            async for chunk in response.content.iter_chunked(1 << 20):
                echoed.update(chunk)
        assert echoed.hexdigest() == upload.hexdigest()

    # The router restarts on the same address: the listener in the pod is back within 5 s.
    await routers.restart()
    started = time.monotonic()
    async with aiohttp.ClientSession() as client:
        async def back() -> bool:
            async with client.get(base + "/", headers={"Host": HOST}) as response:
                return response.status == 200
        await wait_until(back, 5)
    assert time.monotonic() - started < 5
