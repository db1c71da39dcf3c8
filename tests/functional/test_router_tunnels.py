"""Tunnel admission, revocation, router restarts and several routers."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from typing import Any

import aiohttp
import boto3
import jwt
import pytest
from aiohttp import web
from moto import mock_aws

from edge_router.server import Router
from helpers.listener.links import RouterLink
from protocol.messages import Revocation
from protocol.tokens import SigningKey, tunnel_claims
from protocol.tunnel import HOST_HEADER
from tests.support import router as harness
from tests.support.router_stack import HOST, INSTANCE, Stack, stack, upstream

__all__ = ["stack", "upstream"]


async def handshake(router: Router, token: str | None, hostname: str = HOST) -> int:
    """The tunnel endpoint's answer to a handshake: 101 or the refusal's status."""
    headers = {HOST_HEADER: hostname}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    async with aiohttp.ClientSession() as session:
        try:
            async with session.ws_connect(harness.tunnel_url(router), headers=headers):
                return 101
        except aiohttp.WSServerHandshakeError as exc:
            return exc.status


async def reachable(stack: Stack, host: str = HOST) -> int:
    async with await stack.get("/", host) as response:
        return response.status


async def wait_for(predicate: Any, limit: float) -> float:
    """Seconds until ``await predicate()`` is true; fail after ``limit`` seconds."""
    start = time.monotonic()
    while time.monotonic() - start < limit:
        if await predicate():
            return time.monotonic() - start
        await asyncio.sleep(0.05)
    raise AssertionError(f"not true within {limit} s")


async def test_a_good_token_is_accepted(stack: Stack) -> None:
    assert await handshake(stack.router, harness.token(stack.key, INSTANCE)) == 101


async def test_a_token_for_another_host_is_refused(stack: Stack) -> None:
    other = harness.token(stack.key, "other1")
    assert await handshake(stack.router, other, HOST) == 401
    # Nor may a token claim a host whose label is not its instance.
    lying = harness.token(stack.key, "other1", hostname=HOST)
    assert await handshake(stack.router, lying, HOST) == 403
    outside = harness.token(stack.key, "x", hostname="x.example.org")
    assert await handshake(stack.router, outside, "x.example.org") == 403
    # A validly signed token for a host whose label is no instance id (protocol.ids).
    for label in ("a-b", "A1"):
        host = f"{label}.{harness.DOMAIN}"
        odd = harness.token(stack.key, label, hostname=host)
        assert await handshake(stack.router, odd, host) == 403


async def test_expired_forged_and_missing_tokens_are_refused(stack: Stack) -> None:
    past = time.time() - 3600
    expired = stack.key.sign(tunnel_claims(issuer=harness.ISSUER, instance_id=INSTANCE,
                                           hostname=HOST, lifetime=60, now=past))
    assert await handshake(stack.router, expired) == 401
    forger = SigningKey.generate()
    claims = tunnel_claims(issuer=harness.ISSUER, instance_id=INSTANCE, hostname=HOST)
    forged = jwt.encode(claims, forger.private_key, algorithm="ES256",
                        headers={"kid": stack.key.kid})
    assert await handshake(stack.router, forged) == 401
    unsigned = jwt.encode(claims, "", algorithm="none", headers={"kid": stack.key.kid})
    assert await handshake(stack.router, unsigned) == 401
    assert await handshake(stack.router, SigningKey.generate().sign(claims)) == 401
    assert await handshake(stack.router, None) == 401
    assert await handshake(stack.router, "not-a-jwt") == 401
    # A refused tunnel never became a route.
    assert stack.router.routes.tunnel_count == 1


@pytest.fixture
def sqs() -> Iterator[Any]:
    with mock_aws():
        yield boto3.client("sqs", region_name="us-east-1")


async def test_revocation_closes_the_tunnel_within_5_seconds(
        sqs: Any, upstream: tuple[str, int]) -> None:
    queue = sqs.create_queue(QueueName=f"revocations-{uuid.uuid4().hex}")["QueueUrl"]
    key = SigningKey.generate()
    router = await harness.start_router(key, sqs=sqs, revocations_queue_url=queue)
    links = harness.Links()
    client = aiohttp.ClientSession()
    s = Stack(key, router, links, upstream, client)
    try:
        await links.start([harness.tunnel_url(router)], token=harness.token(key, INSTANCE),
                          hostname=HOST, upstream=upstream)
        assert await reachable(s) == 200
        await asyncio.sleep(0.01)  # a token's iat and a revocation's time: milliseconds
        sqs.send_message(QueueUrl=queue, MessageBody=Revocation(
            instance_id=INSTANCE, hostname=HOST, reason="discarded").encode())

        async def gone() -> bool:
            return await reachable(s) == 404 and router.routes.tunnel_count == 0
        assert await wait_for(gone, 5) < 5
        # The listener keeps redialling with the old token: refused, so the host stays gone.
        before = time.time() - 2
        assert await handshake(router, harness.token(key, INSTANCE, iat=before,
                                                     exp=int(before) + 600)) == 403
        await asyncio.sleep(0.5)
        assert await reachable(s) == 404
        # A token issued after the revocation is served again.
        assert await handshake(router, harness.token(key, INSTANCE)) == 101
    finally:
        await client.close()
        await links.close()
        await router.stop()


async def test_router_restart_tunnel_is_back_within_5_seconds(
        upstream: tuple[str, int]) -> None:
    key = SigningKey.generate()
    router = await harness.start_router(key)
    address = router.addresses[0]
    links = harness.Links()
    client = aiohttp.ClientSession()
    try:
        await links.start([harness.tunnel_url(router)], token=harness.token(key, INSTANCE),
                          hostname=HOST, upstream=upstream)
        assert await reachable(Stack(key, router, links, upstream, client)) == 200
        await router.stop()
        router = await harness.start_router(key, listen=(address,))
        s = Stack(key, router, links, upstream, client)

        async def back() -> bool:
            return await reachable(s) == 200
        assert await wait_for(back, 5) < 5
    finally:
        await client.close()
        await links.close()
        await router.stop()


async def test_one_router_of_two_down_instance_still_reachable(
        upstream: tuple[str, int]) -> None:
    key = SigningKey.generate()
    first = await harness.start_router(key)
    second = await harness.start_router(key)
    links = harness.Links()
    client = aiohttp.ClientSession()
    try:
        await links.start([harness.tunnel_url(first), harness.tunnel_url(second)],
                          token=harness.token(key, INSTANCE), hostname=HOST,
                          upstream=upstream)
        via_second = Stack(key, second, links, upstream, client)
        assert await reachable(Stack(key, first, links, upstream, client)) == 200
        await first.stop()
        for _ in range(10):
            assert await reachable(via_second) == 200
    finally:
        await client.close()
        await links.close()
        await first.stop()
        await second.stop()


async def test_heartbeats_drop_a_silent_listener() -> None:
    """A peer that completes the handshake and then never answers a ping is dropped."""
    key = SigningKey.generate()
    router = await harness.start_router(key, heartbeat=0.3)
    try:
        async with aiohttp.ClientSession() as session, session.ws_connect(
                harness.tunnel_url(router), autoping=False,
                headers={"Authorization": f"Bearer {harness.token(key, INSTANCE)}",
                         HOST_HEADER: HOST}):
            assert router.routes.tunnel_count == 1

            async def dropped() -> bool:
                return router.routes.tunnel_count == 0
            assert await wait_for(dropped, 5) < 5
    finally:
        await router.stop()


async def test_heartbeats_make_the_listener_redial_a_silent_router(
        upstream: tuple[str, int]) -> None:
    accepted: list[float] = []

    async def silent(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=False)
        await ws.prepare(request)
        accepted.append(time.monotonic())
        await asyncio.sleep(30)  # never reads, never pongs
        return ws

    app = web.Application()
    app.router.add_get("/t", silent)
    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    session = aiohttp.ClientSession()
    link = RouterLink(session, f"ws://{host}:{port}/t", token="t", hostname=HOST,
                      upstream=upstream, heartbeat=0.3)
    task = asyncio.ensure_future(link.run())
    try:
        async def redialled() -> bool:
            return len(accepted) >= 2
        assert await wait_for(redialled, 5) < 5
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await session.close()
        await runner.cleanup()
