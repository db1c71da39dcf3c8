"""Why small messages do not wait on the path (protocol/tcp.py), tested at the cause, untimed.

Everything in this process, on loopback: the echo tool of ``tests/support/echo_tool.py``
(Nagle on, two small writes per answer, as tornado behind Jupyter does), the auth helper in
front of it with a signed-in session, and a router with two listener links: one handing its
streams to the auth helper's gate in-process (the path users take, as in a pod) and one
straight to the tool.

- Every socket of ours sends small writes at once: ``TCP_NODELAY``, read back with getsockopt.
- Every hop that reads from the tool acknowledges at once: once the client has the tool's first
  write, the tool's second one has left the tool's socket. A hop that delays its ACK (Linux: at
  least 40 ms) leaves it held back by Nagle's algorithm, unsent (``SIOCOUTQNSD``): the
  44 ms a Jupyter cell run took through the path before the fix.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import socket
import struct
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import pytest

from edge_router.server import Router
from helpers.auth.app import AuthHelper
from helpers.auth.config import AuthConfig
from helpers.auth.portal import Tokens
from helpers.auth.server import AuthServer
from protocol import pod
from protocol.tokens import SigningKey
from tests.support import echo_tool
from tests.support import router as testing

SIOCOUTQNSD = 0x894B
"""ioctl: bytes in a socket's send queue not sent yet (linux/sockios.h)."""
WARM_UP = 4
"""Exchanges before looking: Linux ACKs the first segments of a connection at once anyway."""
CHECKED = 5


def unsent(sock: socket.socket) -> int:
    value: int = struct.unpack("i", fcntl.ioctl(sock.fileno(), SIOCOUTQNSD, b"\0" * 4))[0]
    return value


@dataclass
class Path:
    tool_port: int
    tool_connections: list[echo_tool.EchoConnection]
    helper_port: int
    cookie: str
    router: Router

    def way(self, name: str) -> tuple[int, dict[str, str]]:
        """(port, headers) of one way to the tool."""
        router_port = self.router.addresses[0][1]
        signed_in = {"Cookie": f"dit4c-auth={self.cookie}"}
        return {
            "auth helper": (self.helper_port, {"Host": "w.dit4c.test", **signed_in}),
            "router + listener": (router_port, {"Host": f"t.{testing.DOMAIN}"}),
            "whole path": (router_port, {"Host": f"w.{testing.DOMAIN}", **signed_in}),
        }[name]

    def tool_socket(self) -> socket.socket:
        transport = self.tool_connections[-1].transport
        assert transport is not None
        sock: socket.socket = transport.get_extra_info("socket")
        return sock


def helper_config(tool_port: int) -> AuthConfig:
    return AuthConfig.from_env({
        pod.ENV_AUTH_LISTEN: "127.0.0.1:0", pod.ENV_AUTH_UPSTREAM: f"http://127.0.0.1:{tool_port}",
        pod.ENV_INSTANCE_ID: "w", pod.ENV_PUBLIC_URL: "http://w.dit4c.test",
        pod.ENV_OAUTH_CLIENT_ID: "instance-w", pod.ENV_OAUTH_CLIENT_SECRET: "s3cret",
        pod.ENV_OAUTH_AUTHORIZE_URL: "http://portal.dit4c.test/oauth/authorize",
        pod.ENV_OAUTH_TOKEN_URL: "http://127.0.0.1:9/oauth/token",
        pod.ENV_OAUTH_JWKS_URL: "http://127.0.0.1:9/.well-known/jwks.json",
    })


@pytest.fixture
async def path() -> AsyncIterator[Path]:
    connections: list[echo_tool.EchoConnection] = []
    tool = await echo_tool.serve("127.0.0.1", 0, replies=2, connections=connections)
    tool_port = tool.sockets[0].getsockname()[1]
    helper = AuthHelper(helper_config(tool_port))
    server = AuthServer(helper)
    await server.start("127.0.0.1", 0)
    helper_port = server.addresses[0][1]
    now = time.time()
    session = helper.sessions.create(Tokens(
        "not checked here", {"sub": "alice", "iat": now, "exp": now + 300}, None))
    key = SigningKey.generate()
    router = await testing.start_router(key)
    links = testing.Links()
    assert server.gate is not None
    for instance, upstream in (("w", server.gate.connection), ("t", ("127.0.0.1", tool_port))):
        await links.start([testing.tunnel_url(router)], token=testing.token(key, instance),
                          hostname=f"{instance}.{testing.DOMAIN}", upstream=upstream)
    yield Path(tool_port, connections, helper_port, session.session_id, router)
    await links.close()
    await router.stop()
    await server.stop()
    tool.close()


async def test_every_socket_of_ours_on_the_path_sends_small_writes_at_once(path: Path) -> None:
    async with aiohttp.ClientSession() as client:
        for way in ("auth helper", "router + listener", "whole path"):
            port, headers = path.way(way)
            async with client.ws_connect(f"http://127.0.0.1:{port}/ws", headers=headers) as ws:
                await ws.send_str("hi")
                assert (await ws.receive(timeout=10)).data == "busy"
                assert (await ws.receive(timeout=10)).data == "echo: hi"
                async with client.get(f"http://127.0.0.1:{port}/", headers=headers) as response:
                    assert response.status == 200
                checked = nodelay_of_connected_tcp_sockets(exclude_local_port=path.tool_port)
                # client, router (public side, tunnel), listener (tunnel, upstream), helper
                # (both sides): at least the client's, the router's and the listener's.
                assert len(checked) >= 4, checked
                assert all(nodelay for nodelay in checked.values()), checked


def nodelay_of_connected_tcp_sockets(exclude_local_port: int) -> dict[str, bool]:
    """``TCP_NODELAY`` of every connected TCP socket of this process (but the tool's own)."""
    found = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            if not os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                continue
            sock = socket.socket(fileno=os.dup(int(fd)))
        except OSError:
            continue  # gone meanwhile
        with sock:
            if sock.family != socket.AF_INET or sock.type != socket.SOCK_STREAM:
                continue
            try:
                peer = sock.getpeername()
            except OSError:
                continue  # a listening socket
            local = sock.getsockname()
            if local[1] == exclude_local_port:
                continue
            nodelay = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            found[f"{local[1]}->{peer[1]}"] = bool(nodelay)
    return found


@pytest.mark.parametrize("way", ["auth helper", "router + listener", "whole path"])
async def test_a_hop_reading_the_tool_acknowledges_at_once_websocket(path: Path, way: str
                                                                     ) -> None:
    port, headers = path.way(way)
    async with aiohttp.ClientSession() as client, client.ws_connect(
            f"http://127.0.0.1:{port}/ws", headers=headers) as ws:
        held = []
        for i in range(WARM_UP + CHECKED):
            await ws.send_str(str(i))
            assert (await ws.receive(timeout=10)).data == "busy"
            # The tool wrote its answer right after "busy"; Nagle sends it once "busy" is
            # acknowledged. A hop that ACKs at once did so before passing "busy" on.
            if i >= WARM_UP:
                held.append(unsent(path.tool_socket()))
            assert (await ws.receive(timeout=10)).data == f"echo: {i}"
        assert held == [0] * CHECKED


@pytest.mark.parametrize("way", ["auth helper", "router + listener", "whole path"])
async def test_a_hop_reading_the_tool_acknowledges_at_once_http(path: Path, way: str) -> None:
    port, headers = path.way(way)
    connector = aiohttp.TCPConnector(limit=1)  # one keep-alive connection, as a browser tab
    async with aiohttp.ClientSession(connector=connector) as client:
        held = []
        for i in range(WARM_UP + CHECKED):
            async with client.get(f"http://127.0.0.1:{port}/", headers=headers) as response:
                # The head is here; the tool wrote the body right after it.
                if i >= WARM_UP:
                    held.append(unsent(path.tool_socket()))
                assert await response.read() == echo_tool.HTTP_BODY
        assert held == [0] * CHECKED
    await asyncio.sleep(0)
