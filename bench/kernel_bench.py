"""A notebook cell as its user feels it: a JupyterLab kernel's execute round trip through dit4c
against the same image run directly, in one run.

    python -m bench.kernel_bench [--cells 100] [--blocks 4]

The local stack as :mod:`bench.launch_bench` runs it (router, node daemon, pods on the real
Docker engine); ``alice`` launches the catalog's JupyterLab and her browser signs in through the
router (OAuth2 at the portal) and loads ``/lab``; the same image also runs directly (``docker
run`` on the pods network with the catalog's limits, reached at the container's address). On
each side a kernel is started with ``POST /api/kernels`` (Jupyter's ``_xsrf`` cookie echoed, as
the page does) and its channels WebSocket opened by :class:`bench.latency_bench.Client`, which
acknowledges every read at once: the direct figure is the kernel's own, not a client's delayed
ACKs meeting the Nagle tornado turns back on. Then ``--blocks`` blocks of ``--cells`` cells
(``1+1``), alternating direct and dit4c so both see the same machine, each timed from sending
``execute_request`` to receiving its ``execute_reply`` (when JupyterLab marks the cell done).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp
import docker
from yarl import URL

from bench.latency_bench import (
    Client,
    head_end,
    masked_text,
    server_frames,
    upgrade_request,
)
from bench.launch_bench import TOOLS, discard, local_stack, owner, through_dit4c
from bench.node_bench import percentile
from protocol import heap
from tests.support.jupyter_kernel import execute_request, start_kernel

JUPYTERLAB = TOOLS["jupyterlab"]
DEADLINE = 120.0


@dataclass(frozen=True)
class Side:
    """Where a kernel's channels are: the TCP address to dial and the request's head lines."""

    name: str
    address: tuple[str, int]
    host: str
    cookies: str
    kernel_id: str


def reply_end(msg_id: str) -> Callable[[bytearray], int]:
    """Bytes up to the end of the server frame carrying ``msg_id``'s ``execute_reply``."""
    wanted = msg_id.encode()

    def done(buf: bytearray) -> int:
        for start, end in server_frames(buf):
            payload = bytes(buf[start:end])
            if b'"execute_reply"' in payload and wanted in payload:
                return end
        return 0
    return done


async def channels(side: Side) -> Client:
    """The kernel's channels WebSocket, opened as the page opens it."""
    loop = asyncio.get_running_loop()
    _, client = await loop.create_connection(lambda: Client(quickack=True), *side.address)
    await client.exchange(upgrade_request(
        f"/api/kernels/{side.kernel_id}/channels",
        f"Host: {side.host}\r\nCookie: {side.cookies}\r\n".encode()), head_end)
    return client


async def cells(client: Client, count: int) -> list[float]:
    session = uuid.uuid4().hex
    times = []
    for _ in range(count):
        msg_id = uuid.uuid4().hex
        started = time.perf_counter()
        request = json.dumps(execute_request("1+1", session, msg_id, username="bench"))
        await client.exchange(masked_text(request.encode()), reply_end(msg_id))
        times.append(time.perf_counter() - started)
    return times


def cookie_header(jar: aiohttp.abc.AbstractCookieJar, url: str) -> str:
    return "; ".join(f"{k}={m.value}" for k, m in jar.filter_cookies(URL(url)).items())


async def direct_side(client: docker.DockerClient, network: str, labels: dict[str, str]
                      ) -> tuple[Side, aiohttp.ClientSession, str]:
    """The image run as ``docker run`` would, a kernel started in it."""
    container = await asyncio.to_thread(
        client.containers.run, JUPYTERLAB.image, detach=True, network=network, labels=labels,
        nano_cpus=int(JUPYTERLAB.cpu * 1e9), mem_limit=f"{JUPYTERLAB.memory_mb}m")
    address = client.api.inspect_container(container.id)["NetworkSettings"]["Networks"][
        network]["IPAddress"]
    base = f"http://{address}:{JUPYTERLAB.port}"
    session = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
    deadline = time.monotonic() + DEADLINE
    while True:
        try:
            async with session.get(base + "/lab") as response:
                if response.status == 200:
                    break
        except aiohttp.ClientError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("JupyterLab never answered directly")
        await asyncio.sleep(0.1)
    kernel_id = await start_kernel(session, base)
    return (Side("direct to the tool", (address, JUPYTERLAB.port), f"{address}:{JUPYTERLAB.port}",
                 cookie_header(session.cookie_jar, base), kernel_id), session, container.id)


async def measure(env: dict[str, str], client: docker.DockerClient, labels: dict[str, str],
                  count: int, blocks: int) -> dict[str, list[float]]:
    alice, browser, hosts = await owner(env)
    router_port = int(env["DIT4C_ROUTER_PORT"])
    catalog = {i["image"]: i["id"] for i in alice.call("GET", "/api/images")["images"]}
    launch = await through_dit4c(alice, browser, hosts, JUPYTERLAB,
                                 image_id=catalog[JUPYTERLAB.image], router_port=router_port)
    base = f"http://{launch.instance_id}.localhost:{router_port}"
    direct, session, container_id = await direct_side(
        client, env["DIT4C_NODE_PODS_NETWORK"], labels)
    try:
        page = await browser.get(base + "/lab")  # Jupyter's _xsrf cookie, as the page gets it
        if page.status != 200:
            raise RuntimeError(f"JupyterLab through dit4c: {page}")
        through = Side("through dit4c (router + tunnel + listener with the auth helper)",
                       ("127.0.0.1", router_port), urlsplit(base).netloc,
                       cookie_header(browser.jar, base), await start_kernel(browser.session, base))
        sides = [direct, through]
        clients = {side.name: await channels(side) for side in sides}
        heap.freeze()  # the client's own collections are not the path's (latency_bench)
        for client_ in clients.values():
            await cells(client_, 20)  # warm-up: the kernel's first cells are slower
        times: dict[str, list[float]] = {side.name: [] for side in sides}
        for block in range(blocks):
            for side in sides if block % 2 == 0 else reversed(sides):
                times[side.name] += await cells(clients[side.name], count)
        return times
    finally:
        await session.close()
        await browser.close()
        client.api.remove_container(container_id, force=True)
        await discard(alice, launch.instance_id)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cells", type=int, default=100, help="cells per block")
    parser.add_argument("--blocks", type=int, default=4)
    args = parser.parse_args()
    client = docker.from_env(timeout=120)
    load_before = os.getloadavg()[0]
    with local_stack(client) as (env, labels):
        times = asyncio.run(measure(env, client, labels, args.cells, args.blocks))
    print(f"\n{args.blocks} blocks of {args.cells} cells per side, alternating; "
          f"{os.cpu_count()} CPUs, load average {load_before:.2f} before, "
          f"{os.getloadavg()[0]:.2f} at the end\n")
    print("| path | cell p50 ms | p90 ms | p99 ms | mean ms | p50 vs direct |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    direct_p50 = 0.0
    for name, values in times.items():
        p50 = percentile(values, 0.5) * 1000
        direct_p50 = direct_p50 or p50
        print(f"| {name} | {p50:.2f} | {percentile(values, 0.9) * 1000:.2f} "
              f"| {percentile(values, 0.99) * 1000:.2f} | {statistics.mean(values) * 1000:.2f} "
              f"| {p50 / direct_p50:.2f}x ({p50 - direct_p50:+.2f} ms) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
