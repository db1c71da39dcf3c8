"""Issue 14, Low (router side): requests that two HTTP parsers could read differently.

A proxy that reads a message more leniently than the server behind it is how requests are
smuggled past it. Each attack goes to the real router (the in-process ``Router`` on a loopback
socket, a real listener link and tunnel, an upstream that shows what reached it) and must get a
400 with the connection closed, while the router keeps serving; the parser is
``protocol/http1.py``, which the pod's auth gate shares.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.support.router_stack import HOST, Stack, stack, upstream

__all__ = ["stack", "upstream"]

pytestmark = pytest.mark.timeout(60)


async def exchange(stack: Stack, data: bytes) -> bytes:
    """Raw bytes to the router; its whole answer until it closes."""
    host, port = stack.router.addresses[0]
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


def chunked_post(body: bytes) -> bytes:
    return (f"POST /echo HTTP/1.1\r\nHost: {HOST}\r\nTransfer-Encoding: chunked\r\n\r\n"
            .encode() + body)


@pytest.mark.parametrize("body", [
    b"0x5\r\nhello\r\n0\r\n\r\n",
    b"+5\r\nhello\r\n0\r\n\r\n",
    b"-0\r\n\r\n",
    b"5_0\r\n" + b"x" * 80 + b"\r\n0\r\n\r\n",
    b" 5\r\nhello\r\n0\r\n\r\n",
    b"5\nhello\r\n0\r\n\r\n",  # bare LF after the size
    b"5\r\nhello\n0\r\n\r\n",  # bare LF after the data
    b"5\r\nhello\r\n0\r\nX-T: a\x01b\r\n\r\n",  # a control character in a trailer
], ids=["0x5", "+5", "-0", "5_0", "space", "LF-size", "LF-data", "trailer-ctl"])
async def test_lenient_chunked_framing_gets_400(stack: Stack, body: bytes) -> None:
    answer = await exchange(stack, chunked_post(body))
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]
    async with await stack.get("/") as response:
        assert response.status == 200


@pytest.mark.parametrize("head", [
    b"GET / HTTP/1.1\r\nHost: %s\r\nX-A: a\nX-B: b\r\n\r\n",  # bare LF inside the head
    b"GET / HTTP/1.1\r\nHost: %s\r\nX-A: a\x01b\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: %s\r\nX-A: a\x7fb\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: %s\r\nX-A: a\x00b\r\n\r\n",
    b"GET /a\x0bb HTTP/1.1\r\nHost: %s\r\n\r\n",
    b"GET /a\nb HTTP/1.1\r\nHost: %s\r\n\r\n",
], ids=["LF-in-head", "ctl-01", "ctl-7f", "nul", "vt-in-target", "LF-in-target"])
async def test_control_characters_and_bare_lf_in_heads_get_400(stack: Stack,
                                                               head: bytes) -> None:
    answer = await exchange(stack, head % HOST.encode())
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]


async def test_a_clients_own_forwarding_headers_never_reach_the_tool(stack: Stack) -> None:
    async with await stack.get("/headers", headers={
            "X-Real-IP": "6.6.6.6", "X-Forwarded-For": "6.6.6.6", "Forwarded": "for=6.6.6.6",
            "X-Forwarded-Host": "evil.example", "X-A": "tab\tis fine"}) as response:
        seen = json.loads(await response.text())
    assert "X-Real-IP" not in seen and "Forwarded" not in seen
    assert seen["X-Forwarded-For"] == "127.0.0.1"
    assert seen["X-Forwarded-Host"] == HOST
    assert seen["X-A"] == "tab\tis fine"
