"""Issue 14, Medium 2: one client taking all of an instance's tunnel streams.

A tunnel carries at most ``max_streams`` streams. Before: 256 idle keep-alive connections (a
request every < 75 s), or one slow request body (a byte every 5 minutes), held them all and
everyone else got 503. Each attack here goes to the real router (in-process, loopback sockets)
whose tunnel goes, through a real listener link, to the pod's auth gate in-process as in a pod
(``AuthServer``: anonymous requests get its sign-in redirect, a signed-in one reaches the tool).
The attacker comes from 127.0.0.2; the other client, from 127.0.0.1, must still get in.

(The sign-in flood is the auth helper's: ``scenario[flooded_sign_in_starts_push_out_no_one]``.)
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from aiohttp import web

from edge_router.server import Router
from helpers.auth.app import AuthHelper
from helpers.auth.config import AuthConfig
from helpers.auth.portal import Tokens
from helpers.auth.server import AuthServer
from protocol import pod
from protocol.tokens import SigningKey
from tests.support import router as harness

pytestmark = pytest.mark.timeout(60)

INSTANCE = "dosvictim"
HOST = f"{INSTANCE}.{harness.DOMAIN}"
ATTACKER = "127.0.0.2"
OTHER = "127.0.0.1"
MAX_STREAMS, PER_CLIENT, CONNECTIONS_PER_CLIENT = 16, 6, 30
LIMITS = {"max_streams": MAX_STREAMS, "max_streams_per_client": PER_CLIENT,
          "max_connections_per_client": CONNECTIONS_PER_CLIENT, "stream_idle_timeout": 0.5,
          "body_timeout": 1.0}


@dataclass
class Instance:
    router: Router
    helper: AuthHelper
    session_cookie: str

    @property
    def address(self) -> tuple[str, int]:
        return self.router.addresses[0]

    def streams(self, client: str) -> int:
        tunnel = self.router.routes.lookup(HOST)
        assert tunnel is not None
        return tunnel.client_streams.get(client, 0)


@pytest.fixture
async def instance() -> AsyncIterator[Instance]:
    tool = web.AppRunner(harness.upstream_app(), access_log=None)
    await tool.setup()
    site = web.TCPSite(tool, "127.0.0.1", 0)
    await site.start()
    tool_port = tool.addresses[0][1]
    helper = AuthHelper(AuthConfig.from_env({
        pod.ENV_AUTH_LISTEN: "127.0.0.1:0", pod.ENV_AUTH_UPSTREAM: f"http://127.0.0.1:{tool_port}",
        pod.ENV_INSTANCE_ID: INSTANCE, pod.ENV_PUBLIC_URL: f"http://{HOST}",
        pod.ENV_OAUTH_CLIENT_ID: "c", pod.ENV_OAUTH_CLIENT_SECRET: "s",
        pod.ENV_OAUTH_AUTHORIZE_URL: "http://portal.dit4c.test/oauth/authorize",
        pod.ENV_OAUTH_TOKEN_URL: "http://127.0.0.1:9/oauth/token",
        pod.ENV_OAUTH_JWKS_URL: "http://127.0.0.1:9/.well-known/jwks.json"}))
    auth = AuthServer(helper)
    await auth.start("127.0.0.1", 0)
    assert auth.gate is not None
    now = time.time()
    session = helper.sessions.create(Tokens("t", {"sub": "alice", "iat": now, "exp": now + 300},
                                            None))
    key = SigningKey.generate()
    router = await harness.start_router(key, access_log=False, **LIMITS)
    links = harness.Links()
    try:
        await links.start([harness.tunnel_url(router)], token=harness.token(key, INSTANCE),
                          hostname=HOST, upstream=auth.gate.connection)
        yield Instance(router, helper, session.session_id)
    finally:
        await links.close()
        await router.stop()
        await auth.stop()
        await tool.cleanup()


async def connect(instance: Instance, source: str
                  ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(*instance.address, local_addr=(source, 0))


async def answer(reader: asyncio.StreamReader) -> int:
    """Read one whole response (our pages and the gate's redirect have a Content-Length);
    its status, or 0 if the connection closed first."""
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    except asyncio.IncompleteReadError:
        return 0
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    await reader.readexactly(length)
    return int(head.split(b" ", 2)[1])


def get(host: str = HOST) -> bytes:
    return f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()


async def the_other_client_gets_in(instance: Instance) -> None:
    reader, writer = await connect(instance, OTHER)
    try:
        writer.write(get())
        assert await answer(reader) == 302  # the instance's sign-in: it got in
    finally:
        writer.close()


async def test_keep_alive_connections_of_one_address_cannot_take_every_stream(
        instance: Instance) -> None:
    # The attack: more keep-alive connections than the tunnel has streams, each sending a
    # request again well within the idle timeout.
    statuses: list[int] = []
    stop = asyncio.Event()

    async def keep_busy() -> None:
        reader, writer = await connect(instance, ATTACKER)
        with contextlib.closing(writer):
            while not stop.is_set():
                writer.write(get())
                status = await answer(reader)
                statuses.append(status)
                if status != 302:
                    return  # refused and closed: the connection holds nothing
                await asyncio.sleep(0.05)

    attack = [asyncio.ensure_future(keep_busy()) for _ in range(MAX_STREAMS + 4)]
    try:
        await asyncio.sleep(0.5)
        for _ in range(5):
            assert instance.streams(ATTACKER) <= PER_CLIENT
            await the_other_client_gets_in(instance)
    finally:
        stop.set()
        await asyncio.gather(*attack)
    assert 429 in statuses and 503 not in statuses


async def test_idle_keep_alive_connections_give_their_streams_back(instance: Instance) -> None:
    held = []
    for _ in range(PER_CLIENT):
        reader, writer = await connect(instance, ATTACKER)
        writer.write(get())
        assert await answer(reader) == 302
        held.append((reader, writer))
    assert instance.streams(ATTACKER) == PER_CLIENT
    deadline = time.monotonic() + 5
    while instance.streams(ATTACKER):  # idle: the streams go back, the connections stay
        assert time.monotonic() < deadline, "idle connections still hold their streams"
        await asyncio.sleep(0.1)
    tunnel = instance.router.routes.lookup(HOST)
    assert tunnel is not None and not tunnel.mux.streams
    for reader, writer in held:  # and each serves its next request on a new stream
        writer.write(get())
        assert await answer(reader) == 302
        writer.close()


async def test_a_slow_request_body_gives_its_stream_back(instance: Instance) -> None:
    # Signed in (the worst case: the tool reads the body as it comes and answers at its end),
    # each body trickles a byte at a time, far below any real upload.
    head = (f"PUT /echo HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 1000\r\n"
            f"Cookie: dit4c-auth={instance.session_cookie}\r\n\r\n").encode()
    slow = []
    for _ in range(PER_CLIENT):
        reader, writer = await connect(instance, ATTACKER)
        writer.write(head)
        slow.append((reader, writer))

    async def trickle(writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            for _ in range(40):
                writer.write(b"x")
                await asyncio.sleep(0.25)

    trickles = [asyncio.ensure_future(trickle(w)) for _, w in slow]
    try:
        await asyncio.sleep(0.3)
        assert instance.streams(ATTACKER) == PER_CLIENT
        await the_other_client_gets_in(instance)
        deadline = time.monotonic() + 6
        while instance.streams(ATTACKER):
            assert time.monotonic() < deadline, "slow bodies still hold their streams"
            await asyncio.sleep(0.1)
        for reader, _ in slow:
            # 408, or a reset if the tool had begun its answer (it echoes as bytes come).
            data = await asyncio.wait_for(reader.read(), 5)
            assert b"408 Request Timeout" in data or b"200 OK" in data, data[:200]
    finally:
        for task in trickles:
            task.cancel()
        await asyncio.gather(*trickles, return_exceptions=True)
        for _, writer in slow:
            writer.close()
    await the_other_client_gets_in(instance)


async def test_a_body_that_keeps_pace_is_not_cut(instance: Instance) -> None:
    reader, writer = await connect(instance, OTHER)
    writer.write((f"PUT /echo HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 4000\r\n"
                  f"Cookie: dit4c-auth={instance.session_cookie}\r\n"
                  "Connection: close\r\n\r\n").encode())
    for _ in range(8):  # 4000 bytes over 2 s: above 500 bytes/s in every window
        writer.write(b"y" * 500)
        await asyncio.sleep(0.25)
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert data.startswith(b"HTTP/1.1 200 ")
    assert data.split(b"\r\n\r\n", 1)[1].count(b"y") == 4000


async def test_one_address_cannot_open_connections_without_end(instance: Instance) -> None:
    opened = [await connect(instance, ATTACKER)
              for _ in range(CONNECTIONS_PER_CLIENT)]
    reader, writer = await connect(instance, ATTACKER)
    refused = await asyncio.wait_for(reader.read(), 5)
    assert refused.startswith(b"HTTP/1.1 429 "), refused[:100]
    writer.close()
    await the_other_client_gets_in(instance)
    for _, held in opened:
        held.close()
