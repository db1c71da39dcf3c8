"""Issue 14, Medium 4: renewal works over a long-running tunnel.

Tunnel tokens live at most an hour and a router ends a tunnel whose token expired (so that a
token a node keeps after its instance moved, or that leaked, dies soon). The node renews them
through the portal and hands them to the listener, which sends them over its tunnels. Here the
control plane signs tokens of 6 s and the router allows 1 s of leeway: a WebSocket through one
tunnel stays open over three token lifetimes while renewals come, and ends with the token once
they stop. The same real parts as ``test_edge_revocations.py``.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from helpers.listener.tokens import TunnelToken
from protocol import pod
from tests.security.test_edge_revocations import (
    enrol,
    launch,
    plane_with,
    renew,
    router,
    until,
    upstream,
)
from tests.support import router as harness
from tests.support.control_plane import ControlPlane

__all__ = ["upstream"]

pytestmark = pytest.mark.timeout(90)

TOKEN_SECONDS = 6
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def plane() -> Iterator[ControlPlane]:
    yield from plane_with({"DIT4C_TUNNEL_TOKEN_SECONDS": str(TOKEN_SECONDS)})


async def test_renewal_keeps_a_long_running_tunnel_up(plane: ControlPlane,
                                                      upstream: tuple[str, int],
                                                      tmp_path: Path):
    node = enrol(plane, "renewing")
    item, start = launch(plane, node)
    first = renew(plane, node, item.instance_id)  # fresh: the start's may be seconds old
    token_file = tmp_path / "tunnel-token"
    token = TunnelToken(first.json()["tunnel_token"], str(token_file))
    async with router(plane, queue=False) as edge:
        links = harness.Links()
        watching = asyncio.ensure_future(token.watch(interval=0.2))
        host, port = edge.addresses[0]
        try:
            await links.start([harness.tunnel_url(edge)], token=token,
                              hostname=start.hostname, upstream=upstream)
            tunnel = edge.routes.lookup(start.hostname)
            async with aiohttp.ClientSession() as browser, browser.ws_connect(
                    f"http://{host}:{port}/ws", headers={"Host": start.hostname}) as ws:
                # Over two token lifetimes, renewed as the node does (the portal, then the
                # listener's own renew command), over one WebSocket that stays open.
                for _ in range(5):
                    renewal = renew(plane, node, item.instance_id)
                    assert renewal.status_code == 200, renewal.text
                    handed = await asyncio.create_subprocess_exec(
                        sys.executable, "-m", "helpers.listener", "renew", cwd=ROOT, env={
                            **os.environ, "PYTHONPATH": str(ROOT),
                            pod.ENV_TUNNEL_TOKEN: renewal.json()["tunnel_token"],
                            pod.ENV_TUNNEL_TOKEN_FILE: str(token_file)})
                    assert await asyncio.wait_for(handed.wait(), 30) == 0
                    await ws.send_str("still here")
                    assert (await ws.receive(timeout=5)).data == "still here"
                    await asyncio.sleep(2)
                assert edge.routes.lookup(start.hostname) is tunnel  # the same tunnel
                # Without renewals the tunnel ends with its token (and the WebSocket with it).
                await until(lambda: edge.routes.lookup(start.hostname) is None,
                            TOKEN_SECONDS + 4)
                assert (await ws.receive(timeout=5)).type in (
                    aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)
        finally:
            watching.cancel()
            await links.close()
