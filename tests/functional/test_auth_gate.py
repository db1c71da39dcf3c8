"""The auth helper's gate (helpers/auth/gate.py) in-process: what the browser scenarios of
``tests/support/auth_scenarios.py`` do not reach, on a socket and on tunnel streams (as the
listener runs it in a pod). The tool is the echo tool of
``tests/support/echo_tool.py`` (which does not look at the requests it answers); sessions are
made in the helper's memory."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import pytest
from aiohttp import web

from helpers.auth.app import AuthHelper
from helpers.auth.portal import Tokens
from helpers.auth.server import AuthServer
from protocol import pod
from protocol.tokens import SigningKey
from tests.functional.test_path_sockets import helper_config
from tests.ports import free_port
from tests.support import echo_tool
from tests.support import router as testing


@dataclass
class Gate:
    helper: AuthHelper
    port: int
    cookie: str

    async def open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.port)


async def start(tool_port: int) -> tuple[AuthServer, Gate]:
    helper = AuthHelper(helper_config(tool_port))
    server = AuthServer(helper)
    await server.start("127.0.0.1", 0)
    now = time.time()
    session = helper.sessions.create(Tokens("x", {"sub": "alice", "iat": now, "exp": now + 300},
                                            None))
    return server, Gate(helper, server.addresses[0][1], session.session_id)


@pytest.fixture
async def gate() -> AsyncIterator[Gate]:
    tool = await echo_tool.serve("127.0.0.1", 0)
    server, made = await start(tool.sockets[0].getsockname()[1])
    yield made
    await server.stop()
    tool.close()


async def response(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head, await asyncio.wait_for(reader.readexactly(length), 10)


def request(path: str, cookie: str | None = None, extra: str = "") -> bytes:
    lines = f"GET {path} HTTP/1.1\r\nHost: w.dit4c.test\r\n"
    if cookie:
        lines += f"Cookie: dit4c-auth={cookie}\r\n"
    return (lines + extra + "\r\n").encode()


async def test_one_connection_goes_to_the_tool_and_the_helper_in_order(gate: Gate) -> None:
    """Pipelined: signed in (tool), anonymous (helper: sign-in redirect), signed in again."""
    reader, writer = await gate.open()
    writer.write(request("/a", gate.cookie) + request("/b") + request("/c", gate.cookie))
    first, body = await response(reader)
    assert first.startswith(b"HTTP/1.1 200") and body == echo_tool.HTTP_BODY
    second, _ = await response(reader)
    assert second.startswith(b"HTTP/1.1 302") and b"/oauth/authorize?" in second
    third, body = await response(reader)
    assert third.startswith(b"HTTP/1.1 200") and body == echo_tool.HTTP_BODY
    writer.close()
    await writer.wait_closed()


async def test_the_helpers_own_paths_never_reach_the_tool(gate: Gate) -> None:
    reader, writer = await gate.open()
    writer.write(request(pod.LOGOUT_PATH, gate.cookie))
    head, body = await response(reader)
    assert head.startswith(b"HTTP/1.1 200") and b"signed out" in body
    assert gate.helper.sessions.get(gate.cookie) is None  # the helper ended the session
    writer.write(request("/a", gate.cookie))
    head, _ = await response(reader)
    assert head.startswith(b"HTTP/1.1 302")  # no session any more: sign in again
    writer.close()
    await writer.wait_closed()


async def test_a_session_due_for_renewal_goes_to_the_helper(gate: Gate) -> None:
    session = gate.helper.sessions.get(gate.cookie)
    assert session is not None
    session.tokens.claims["iat"] = time.time() - 290  # renew at 4/5 of its 300 s life
    reader, writer = await gate.open()
    writer.write(request("/a", gate.cookie))
    head, _ = await response(reader)
    # The helper tries the portal (unreachable here): the token still lives, so it proxies.
    assert head.startswith(b"HTTP/1.1 200"), head
    writer.close()
    await writer.wait_closed()


async def test_malformed_requests_get_400(gate: Gate) -> None:
    reader, writer = await gate.open()
    writer.write(b"GET / HTTP/1.1\r\nHost: w.dit4c.test\r\nBad header\r\n\r\n")
    head, _ = await response(reader)
    assert head.startswith(b"HTTP/1.1 400")
    assert await asyncio.wait_for(reader.read(), 10) == b""
    writer.close()
    await writer.wait_closed()


async def test_a_tool_that_does_not_answer_gets_502() -> None:
    server, gate = await start(free_port())  # nothing listens there
    try:
        reader, writer = await gate.open()
        writer.write(request("/", gate.cookie))
        head, body = await response(reader)
        assert head.startswith(b"HTTP/1.1 502") and b"not answering" in body
        writer.close()
        await writer.wait_closed()
    finally:
        await server.stop()


async def test_the_tool_sees_forwarded_headers_and_no_helper_cookie(gate: Gate) -> None:
    seen: list[bytes] = []
    loop = asyncio.get_running_loop()

    class Recorder(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport

        def data_received(self, data: bytes) -> None:
            seen.append(data)
            self.transport.write(b"HTTP/1.1 204 No Content\r\n"
                                 b"Set-Cookie: dit4c-auth=evil; Path=/\r\n"
                                 b"Set-Cookie: tool=1\r\n\r\n")

    tool = await loop.create_server(Recorder, "127.0.0.1", 0)
    server, recording = await start(tool.sockets[0].getsockname()[1])
    try:
        reader, writer = await recording.open()
        writer.write(request("/x?q=1", recording.cookie,
                             "Cookie: a=1\r\nX-Forwarded-For: 203.0.113.9\r\n"))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert b"dit4c-auth" not in head and b"Set-Cookie: tool=1" in head
        sent = b"".join(seen)
        assert sent.startswith(b"GET /x?q=1 HTTP/1.1\r\n")
        assert b"dit4c-auth" not in sent and b"Cookie: a=1\r\n" in sent
        assert b"X-Forwarded-For: 203.0.113.9\r\n" in sent
        assert b"X-Forwarded-Proto: http\r\nX-Forwarded-Host: w.dit4c.test\r\n" in sent
        writer.close()
        await writer.wait_closed()
    finally:
        await server.stop()
        tool.close()


# --- the gate serving tunnel streams in the listener's process, as in a pod ----------------

@dataclass
class PodPath:
    base: str
    headers: dict[str, str]


@pytest.fixture
async def pod_path() -> AsyncIterator[PodPath]:
    """Router -> tunnel -> the gate in-process (helpers/listener/streams.py) -> the router
    tests' upstream app as the tool (``/bytes/{n}``, ``/echo``, ``/ws``)."""
    runner = web.AppRunner(testing.upstream_app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    server, made = await start(runner.addresses[0][1])
    assert server.gate is not None
    key = SigningKey.generate()
    router = await testing.start_router(key)
    links = testing.Links()
    await links.start([testing.tunnel_url(router)], token=testing.token(key, "w"),
                      hostname=f"w.{testing.DOMAIN}", upstream=server.gate.connection)
    host, port = router.addresses[0]
    yield PodPath(f"http://{host}:{port}", {"Host": f"w.{testing.DOMAIN}",
                                            "Cookie": f"dit4c-auth={made.cookie}"})
    await links.close()
    await router.stop()
    await server.stop()
    await runner.cleanup()


async def test_large_bodies_cross_the_in_process_gate_both_ways(pod_path: PodPath) -> None:
    size = 20 * 1024 * 1024
    async with aiohttp.ClientSession() as client:
        async with client.get(f"{pod_path.base}/bytes/{size}", headers=pod_path.headers) as got:
            assert got.status == 200
            assert len(await got.read()) == size
        body = hashlib.sha256()

        async def upload() -> AsyncIterator[bytes]:
            for i in range(80):
                chunk = bytes([i]) * 256 * 1024
                body.update(chunk)
                yield chunk

        echoed = hashlib.sha256()
        async with client.post(f"{pod_path.base}/echo", data=upload(),
                               headers=pod_path.headers) as got:
            assert got.status == 200
            async for chunk in got.content.iter_chunked(65536):
                echoed.update(chunk)
        assert echoed.hexdigest() == body.hexdigest()


async def test_websocket_and_sign_in_through_the_in_process_gate(pod_path: PodPath) -> None:
    async with aiohttp.ClientSession() as client:
        async with client.ws_connect(f"{pod_path.base}/ws", headers=pod_path.headers) as ws:
            for i in range(3):
                await ws.send_str(f"hi {i}")
                assert (await ws.receive(timeout=10)).data == f"hi {i}"
        anonymous = {"Host": pod_path.headers["Host"]}
        async with client.get(f"{pod_path.base}/", headers=anonymous,
                              allow_redirects=False) as got:
            assert got.status == 302 and "/oauth/authorize?" in got.headers["Location"]
