"""Issue 14, Medium 4: revocations forgotten on restart, and the old placement's token.

Before: tunnel tokens were 30-day bearer tokens and routers kept revocations in memory only
(deleted from SQS once read), so after a router restart a revoked token was accepted again; and
moving an instance to another node revoked nothing, so the old node could take the tunnels.

Everything here is real: the control plane's API over moto (``ControlPlane``: it signs the
tokens, keeps the revocations list, renews tokens for the node an instance is placed on, and
publishes revocations through SNS to the router's queue), routers in-process on loopback that
fetch the JWKS and the list over HTTP, listener links with real tunnels. Renewal over a
long-running tunnel: ``test_edge_renewal.py`` (tokens of a few seconds there).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
import requests
from aiohttp import web

from control_plane.records import Instance, NodeStatus
from edge_router.server import Router
from protocol.messages import NodeHeartbeat, StartInstance, decode
from protocol.tokens import node_claims, unverified_claims
from protocol.tunnel import HOST_HEADER, TUNNEL_PATH
from tests.support import router as harness
from tests.support.control_plane import ControlPlane, control_plane
from tests.support.portal_http import Node

pytestmark = pytest.mark.timeout(90)

DOMAIN = "apps.test"


def plane_with(settings: dict[str, str]) -> Iterator[ControlPlane]:
    with control_plane(settings=settings) as made:
        made.services.accounts.set_password("alice", "alice-password-1")
        yield made


@pytest.fixture(scope="module")
def plane() -> Iterator[ControlPlane]:
    yield from plane_with({})


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[str, int]]:
    runner = web.AppRunner(harness.upstream_app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield runner.addresses[0][:2]
    await runner.cleanup()


def renew(plane: ControlPlane, node: Node, instance_id: str) -> requests.Response:
    """What the node daemon does at half-life (its own JWT)."""
    return requests.post(
        f"{plane.url}/api/nodes/{node.node_id}/instances/{instance_id}/tunnel-token",
        headers={"Authorization": "Bearer " + node.key.sign(node_claims(node_id=node.node_id))},
        timeout=15)


def enrol(plane: ControlPlane, name: str) -> Node:
    node = Node.enrol(plane, name, cpu=4, memory_mb=4096)
    alive(plane, node)
    return node


def alive(plane: ControlPlane, node: Node) -> None:
    nodes = plane.services.nodes
    assert nodes.heartbeat(nodes.get(node.node_id), NodeHeartbeat(
        node_id=node.node_id, version="test", cpu_total=4, memory_mb_total=4096, cpu_used=0,
        memory_mb_used=0, load=0, running=[]))


def start_on(plane: ControlPlane, node: Node) -> StartInstance:
    """The start command the node got (its queue), with the instance's first tunnel token."""
    answer = plane.sqs.receive_message(QueueUrl=plane.queue_url(node.node_id),
                                       MaxNumberOfMessages=1, WaitTimeSeconds=5)
    (message,) = answer["Messages"]
    plane.sqs.delete_message(QueueUrl=plane.queue_url(node.node_id),
                             ReceiptHandle=message["ReceiptHandle"])
    start = decode(message["Body"])
    assert isinstance(start, StartInstance)
    return start


def launch(plane: ControlPlane, node: Node) -> tuple[Instance, StartInstance]:
    svc = plane.services
    instance_id = os.urandom(8).hex()
    item = svc.instances.create(Instance(
        instance_id=instance_id, owner="alice", name="t", image_id="i", image="tool:1",
        port=8080, cpu=0.5, memory_mb=256, cluster_id=plane.cluster_id,
        hostname=plane.config.instance_hostname(instance_id),
        url=plane.config.instance_url(instance_id)), limit=100)
    placed = svc.scheduler.place(item)
    assert placed.node_id == node.node_id, placed
    return placed, start_on(plane, node)


@contextlib.asynccontextmanager
async def router(plane: ControlPlane, *, revocations_list: bool = True,
                 queue: bool = True) -> AsyncIterator[Router]:
    made = Router(harness.config(
        domain=DOMAIN, jwks_url=f"{plane.url}/.well-known/jwks.json", token_issuer=plane.url,
        revocations_url=f"{plane.url}/api/revocations" if revocations_list else None,
        revocations_queue_url=plane.router_queue_url if queue else None,
        aws_endpoint_url=plane.aws.url, token_leeway=1), sqs=plane.aws.client("sqs"))
    await made.start()
    try:
        if made.revocations is not None:  # until then tunnels get 503 (listeners retry)
            await asyncio.wait_for(made.revocations.loaded.wait(), 10)
        yield made
    finally:
        await made.stop()


async def handshake(made: Router, token: str, hostname: str) -> int:
    """A listener's tunnel handshake with ``token``: the router's status (101: accepted)."""
    host, port = made.addresses[0]
    async with aiohttp.ClientSession() as session:
        try:
            async with session.ws_connect(
                    f"ws://{host}:{port}{TUNNEL_PATH}",
                    headers={"Authorization": f"Bearer {token}", HOST_HEADER: hostname}):
                return 101
        except aiohttp.WSServerHandshakeError as exc:
            return exc.status


async def until(check: Any, within: float) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "not within the time allowed"
        await asyncio.sleep(0.1)


async def test_a_revoked_token_stays_refused_after_a_router_restart(plane: ControlPlane):
    node = enrol(plane, "restart")
    item, start = launch(plane, node)
    async with router(plane) as first:
        assert await handshake(first, start.tunnel_token, start.hostname) == 101
        plane.services.lifecycle.messenger.revoke(item.instance_id, item.hostname, "deleted")
        # The running router hears it on its queue, and consumes the message.
        await until(lambda: first.routes.lookup(start.hostname) is None, 10)
        await asyncio.sleep(1.5)
        assert await handshake(first, start.tunnel_token, start.hostname) == 403
    # The attack as it was: a router that starts without the list knows nothing.
    async with router(plane, revocations_list=False) as forgetful:
        assert await handshake(forgetful, start.tunnel_token, start.hostname) == 101
    # With the list (read at start, before any tunnel is let in), the token stays refused.
    async with router(plane) as restarted:
        assert await handshake(restarted, start.tunnel_token, start.hostname) == 403
        # A token the control plane issues afterwards (the instance reachable again) passes.
        renewed = plane.services.scheduler.tunnel_token(item.instance_id)
        assert await handshake(restarted, renewed, start.hostname) == 101


async def test_the_old_placements_token_is_refused_after_a_reschedule(
        plane: ControlPlane, upstream: tuple[str, int]):
    old_node, new_node = enrol(plane, "old-node"), enrol(plane, "new-node")
    plane.services.nodes.set_status(new_node.node_id, NodeStatus.DRAINING)
    item, old_start = launch(plane, old_node)
    async with router(plane) as edge:
        # The old holder fills the host's tunnels (4, the most one host may have).
        links = harness.Links()
        try:
            await links.start([harness.tunnel_url(edge)] * 4, token=old_start.tunnel_token,
                              hostname=old_start.hostname, upstream=upstream)
            assert edge.routes.tunnel_count == 4
            # The node never picked the instance up: the reaper places it again, elsewhere.
            plane.services.nodes.set_status(new_node.node_id, NodeStatus.ACTIVE)
            plane.services.nodes.set_status(old_node.node_id, NodeStatus.DRAINING)
            fresh = plane.services.instances.get(item.instance_id)
            assert fresh is not None
            repended = plane.services.scheduler.release_and_repend(fresh, "not picked up")
            placed = plane.services.scheduler.place(repended)
            assert placed.node_id == new_node.node_id
            new_start = start_on(plane, new_node)
            await until(lambda: edge.routes.tunnel_count == 0, 10)  # the old ones cut off
            assert await handshake(edge, old_start.tunnel_token, old_start.hostname) == 403
            assert await handshake(edge, new_start.tunnel_token, new_start.hostname) == 101
        finally:
            await links.close()
    # After a restart as well; and the old node gets no fresh token, the new one does.
    async with router(plane) as restarted:
        assert await handshake(restarted, old_start.tunnel_token, old_start.hostname) == 403
        assert await handshake(restarted, new_start.tunnel_token, new_start.hostname) == 101
    assert renew(plane, old_node, item.instance_id).status_code == 403
    renewal = renew(plane, new_node, item.instance_id)
    assert renewal.status_code == 200
    claims = unverified_claims(renewal.json()["tunnel_token"])
    assert claims["host"] == new_start.hostname and claims["exp"] - claims["iat"] <= 3600
    alive(plane, old_node)
