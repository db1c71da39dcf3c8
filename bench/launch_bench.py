"""Launch overhead as the owner feels it: from the API call to the browser reaching the tool.

    python -m bench.launch_bench [--launches 10] [--images busybox,jupyterlab] [--sandboxes 1]
                                 [--timeline]

Runs ``python -m infra.local run`` (portal, API, moto, edge router, node daemon on the real
Docker engine) on free ports with its own data directory and pods network. ``alice`` signs in
to the portal once (a user launching from the portal is signed in there); then, for each image
and each of ``--launches`` rounds after one uncounted warm-up, interleaved so both see the same
machine load:

- **bare**: ``docker run -d`` of the image on the pods network, with the catalog entry's CPU
  and memory limits (as the pod's tool gets them), then a GET from the host to the
  container's address every 20 ms until it answers 200;
- **dit4c**: ``POST /api/instances`` as alice, then her browser (cookie jar) GETs the instance
  URL through the router every 20 ms, following redirects — the auth helper's OAuth2 sign-in at
  the portal included — until the tool's own page answers 200. The URL is known from the
  launch call's answer (``<id>.localhost``); when the API first reports the instance
  ``running`` (the portal shows its link then) is recorded too.

``--sandboxes`` sets the node's pool of ready pod sandboxes (``DIT4C_NODE_SANDBOXES``; 0 shows
the launch without it); ``--timeline`` prints where the last launch of each image spent its
time (:mod:`bench.launch_timeline`).

Prints p50/p95 of both and the overhead (dit4c - bare) per image as a Markdown table. Every
instance is stopped and discarded after its round; everything created carries the label
``dit4c.bench=<run>`` and is removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import requests

from bench.launch_timeline import (
    Step,
    browser_step,
    container_log_steps,
    docker_steps,
    log_steps,
    merge,
    render,
)
from bench.node_bench import percentile
from node_daemon.network import ensure_pods_network
from node_daemon.sandboxes import LABEL_SANDBOX
from protocol import pod
from scripts import images
from scripts.build_images import ImageBuilder, pinned
from scripts.cleanup import remove_labelled
from tests.ports import free_port
from tests.support.auth_harness import Browser
from tests.support.local_stack import StackProcess

PASSWORD = "a-password-for-the-bench"  # noqa: S105 - a throwaway local stack
POLL = 0.02
DEADLINE = 120.0


@dataclass(frozen=True)
class Tool:
    image: str
    port: int
    marker: str
    """Text of the tool's own page (not a login page, not the router's 503)."""
    cpu: float
    memory_mb: int
    """As in the local catalog (infra/local/catalog.py)."""


TOOLS = {
    "busybox": Tool(images.TEST_TOOL, images.TEST_TOOL_PORT, "dit4c test tool", 0.5, 64),
    "jupyterlab": Tool(images.JUPYTERLAB, images.JUPYTERLAB_PORT, "JupyterLab", 1.0, 1024),
}


class Api:
    """A portal user over the JSON API (session cookie + CSRF header, as the portal page)."""

    def __init__(self, base: str, username: str, password: str) -> None:
        self.base = base
        self.http = requests.Session()
        response = self.http.post(f"{base}/api/login", timeout=30,
                                  json={"username": username, "password": password})
        response.raise_for_status()
        self.http.headers["X-CSRF-Token"] = response.json()["csrf_token"]

    def call(self, method: str, path: str, body: Any = None) -> Any:
        response = self.http.request(method, self.base + path, json=body, timeout=30)
        if response.status_code >= 400:
            raise RuntimeError(f"{method} {path}: {response.status_code} {response.text}")
        return response.json() if response.content else None


def bare(client: docker.DockerClient, tool: Tool, network: str, labels: dict[str, str]
         ) -> float:
    """Seconds from ``docker run -d`` to the tool answering 200 at its address."""
    began = time.monotonic()
    # The catalog entry's limits, as the pod's tool gets them: the overhead is the platform's.
    container = client.containers.run(tool.image, detach=True, network=network, labels=labels,
                                      nano_cpus=int(tool.cpu * 1e9),
                                      mem_limit=f"{tool.memory_mb}m")
    try:
        address = client.api.inspect_container(container.id)["NetworkSettings"]["Networks"][
            network]["IPAddress"]
        while True:
            try:
                with urllib.request.urlopen(f"http://{address}:{tool.port}/",
                                            timeout=2) as response:
                    if response.status == 200:
                        return time.monotonic() - began
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() - began > DEADLINE:
                raise RuntimeError(f"bare {tool.image} never answered")
            time.sleep(POLL)
    finally:
        container.remove(force=True)


@dataclass
class Launch:
    instance_id: str
    reached: float
    """Seconds from the launch call to the owner's browser getting the tool's page."""
    reported: float
    """Seconds from the launch call to the API reporting the instance running."""
    began: float
    """Wall clock of the launch call."""
    steps: list[Step]
    """What the bench saw (the call, its answer, the browser's responses), for --timeline."""


async def through_dit4c(api: Api, browser: Browser, hosts: dict[str, tuple[str, int]],
                        tool: Tool, *, image_id: str, router_port: int) -> Launch:
    """Launch ``tool`` as ``api``'s user and follow it into the browser.

    The browser goes to the instance's URL at once (``<id>.localhost``: known from the launch
    call's answer) and retries every 20 ms through whatever it meets on the way: the router's
    404 before the tunnel is up, the sign-in at the portal, the auth helper's 502 while the
    tool does not answer yet."""
    began, wall = time.monotonic(), time.time()
    instance = await asyncio.to_thread(api.call, "POST", "/api/instances",
                                       {"image_id": image_id})
    steps = [Step(wall, "bench", "POST /api/instances"),
             Step(time.time(), "bench", "launch call answered")]
    seen_steps: set[tuple[int, str]] = set()

    def on_response(status: int, url: str) -> None:
        if (status, url) not in seen_steps:
            seen_steps.add((status, url))
            steps.append(browser_step(time.time(), status, url))

    host = f"{instance['id']}.localhost"
    hosts[host] = ("127.0.0.1", router_port)  # the browser's resolver
    url = f"http://{host}:{router_port}/"
    running = asyncio.ensure_future(_running(api, instance["id"], began))
    seen: dict[str, float] = {}
    try:
        while True:
            page = await browser.get(url, on_response=on_response)
            seen.setdefault(str(page.status), time.monotonic() - began)
            if page.status == 200 and tool.marker in page.text:
                reached = time.monotonic() - began
                break
            if time.monotonic() - began > DEADLINE:
                raise RuntimeError(f"{tool.image} never reached through dit4c: {page}")
            if running.done():
                running.result()  # a failed launch says why, at once
            await asyncio.sleep(POLL)
        reported = await asyncio.wait_for(running, DEADLINE)
    finally:
        running.cancel()
    print("  first seen (s): " + ", ".join(f"{k} {v:.3f}" for k, v in seen.items())
          + f"; reported running at {reported:.3f}", file=sys.stderr)
    steps.append(Step(wall + reported, "bench", "the API says running"))
    return Launch(instance["id"], reached, reported, wall, steps)


async def _running(api: Api, instance_id: str, began: float) -> float:
    """When the API first says the instance runs (the portal shows its link then)."""
    while True:
        got = await asyncio.to_thread(api.call, "GET", f"/api/instances/{instance_id}")
        if got["state"] == "running":
            return time.monotonic() - began
        if got["state"] == "failed":
            raise RuntimeError(f"launch failed: {got}")
        await asyncio.sleep(POLL)


async def discard(api: Api, instance_id: str) -> None:
    await asyncio.to_thread(api.call, "POST", f"/api/instances/{instance_id}/stop")
    deadline = time.monotonic() + 60
    while (await asyncio.to_thread(api.call, "GET", f"/api/instances/{instance_id}")
           )["state"] != "stopped":
        if time.monotonic() > deadline:
            raise RuntimeError(f"{instance_id} did not stop")
        await asyncio.sleep(0.2)
    await asyncio.to_thread(api.call, "POST", f"/api/instances/{instance_id}/discard")


def pod_containers(client: docker.DockerClient, instance_id: str) -> dict[str, str]:
    """The instance's containers by role (id), its pod sandbox's included."""
    rows = client.api.containers(all=True, filters={"label": f"{pod.LABEL_INSTANCE}={instance_id}"})
    found = {row["Labels"].get(pod.LABEL_ROLE, "?"): row["Id"] for row in rows}
    for sandbox in {row["Labels"].get(LABEL_SANDBOX) for row in rows} - {None}:
        for row in client.api.containers(all=True,
                                         filters={"label": f"{LABEL_SANDBOX}={sandbox}"}):
            found.setdefault(row["Labels"].get(pod.LABEL_ROLE, "?"), row["Id"])
    return found


def timeline(client: docker.DockerClient, logs: Path, launch: Launch) -> str:
    until = launch.began + launch.reported + 1.0
    containers = pod_containers(client, launch.instance_id)
    steps = merge(
        launch.steps,
        log_steps(logs, launch.instance_id, launch.began, until),
        docker_steps(client, containers, launch.began - 0.5, until),
        container_log_steps(client, {r: c for r, c in containers.items()
                                     if r in (pod.ROLE_LISTENER, pod.ROLE_STORAGE)},
                            launch.began - 0.5, until))
    return render(steps, launch.began)


async def owner(env: dict[str, str]) -> tuple[Api, Browser, dict[str, tuple[str, int]]]:
    """``alice``, made by the admin, over the API and in her browser (signed in at the portal:
    a user launching from the portal is), and the browser's resolver."""
    portal = f"http://127.0.0.1:{env['DIT4C_PORTAL_PORT']}"
    admin = Api(portal, "admin", PASSWORD)
    admin.call("POST", "/api/users", {"username": "alice", "password": PASSWORD})
    hosts = {"localhost": ("127.0.0.1", int(env["DIT4C_PORTAL_PORT"]))}
    browser = Browser(hosts, "alice", PASSWORD)
    await browser.get(f"http://localhost:{env['DIT4C_PORTAL_PORT']}/login?next=/")
    return Api(portal, "alice", PASSWORD), browser, hosts


async def rounds(env: dict[str, str], client: docker.DockerClient, tools: list[Tool],
                 launches: int, labels: dict[str, str], *, timelines: dict[str, str] | None
                 ) -> dict[str, tuple[list[float], list[float], list[float]]]:
    alice, browser, hosts = await owner(env)
    catalog = {i["image"]: i["id"] for i in alice.call("GET", "/api/images")["images"]}
    router_port = int(env["DIT4C_ROUTER_PORT"])
    results: dict[str, tuple[list[float], list[float], list[float]]] = {}
    try:
        for tool in tools:
            bares: list[float] = []
            pods: list[float] = []
            runs: list[float] = []
            for round_ in range(launches + 1):
                plain = await asyncio.to_thread(bare, client, tool, env[
                    "DIT4C_NODE_PODS_NETWORK"], labels)
                launch = await through_dit4c(
                    alice, browser, hosts, tool, image_id=catalog[tool.image],
                    router_port=router_port)
                seconds, reported = launch.reached, launch.reported
                if timelines is not None and round_ == launches:
                    await asyncio.sleep(1.0)  # the logs are written
                    timelines[tool.image] = await asyncio.to_thread(
                        timeline, client, Path(env["DIT4C_DATA_DIR"]) / "logs", launch)
                await discard(alice, launch.instance_id)
                print(f"{tool.image} round {round_}: bare {plain:.3f} s, dit4c "
                      f"{seconds:.3f} s (running reported at {reported:.3f} s)",
                      file=sys.stderr)
                if round_:
                    bares.append(plain)
                    pods.append(seconds)
                    runs.append(reported)
            results[tool.image] = (bares, pods, runs)
    finally:
        await browser.close()
    return results


@contextlib.contextmanager
def local_stack(client: docker.DockerClient, *, sandboxes: int = 1,
                stack_log: Path | None = None
                ) -> Iterator[tuple[dict[str, str], dict[str, str]]]:
    """``python -m infra.local run`` on free ports with its own data directory and pods
    network, ready: yields its environment and the labels of everything the bench makes (all
    removed at the end). Prints the stack's output if the body fails."""
    built = {result.name: result for result in ImageBuilder(client).ensure(images.ALL)}
    # By its recipe tag: another checkout on this engine may move dit4c/helpers:dev meanwhile.
    helpers_image = pinned(images.HELPERS, built[images.HELPERS].recipe)
    run_id = uuid.uuid4().hex[:10]
    labels = {"dit4c.bench": run_id}
    network = f"dit4c-bench-{run_id}"
    ensure_pods_network(client, network, labels)
    with tempfile.TemporaryDirectory(prefix="dit4c-bench-stack-") as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "DIT4C_"))}
        env.update({
            "DIT4C_DATA_DIR": str(Path(tmp) / "data"), "DIT4C_STACK_NAME": "dit4c-bench",
            "DIT4C_PUBLISH_HELPERS": "0",
            "DIT4C_PORTAL_PORT": str(free_port()), "DIT4C_ROUTER_PORT": str(free_port()),
            "DIT4C_AWS_PORT": str(free_port()), "DIT4C_ADMIN_PASSWORD": PASSWORD,
            "DIT4C_NODE_PODS_NETWORK": network, "DIT4C_NODE_HELPERS_IMAGE": helpers_image,
            "DIT4C_NODE_LABELS": ",".join(f"{k}={v}" for k, v in labels.items()),
            "DIT4C_NODE_METRICS_LISTEN": "127.0.0.1:0", "DIT4C_ROUTER_ACCESS_LOG": "0",
            "DIT4C_NODE_SANDBOXES": str(sandboxes),
        })
        stack = StackProcess(env)
        try:
            stack.wait_ready()
            yield env, labels
        except Exception:
            print(stack.output()[-5000:], file=sys.stderr)
            raise
        finally:
            stack.kill()
            if stack_log is not None:
                stack_log.write_text(stack.output())
            remove_labelled(client, f"dit4c.bench={run_id}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--launches", type=int, default=10)
    parser.add_argument("--images", default="busybox,jupyterlab",
                        help=f"comma list of {', '.join(TOOLS)}")
    parser.add_argument("--stack-log", type=Path, help="write the local stack's output here")
    parser.add_argument("--sandboxes", type=int, default=1,
                        help="free pod sandboxes the node keeps (0: each launch makes its own)")
    parser.add_argument("--timeline", action="store_true",
                        help="print where the last launch of each image spent its time")
    args = parser.parse_args()
    tools = [TOOLS[name] for name in args.images.split(",")]
    client = docker.from_env(timeout=120)
    timelines: dict[str, str] | None = {} if args.timeline else None
    with local_stack(client, sandboxes=args.sandboxes, stack_log=args.stack_log) as (env,
                                                                                   labels):
        results = asyncio.run(rounds(env, client, tools, args.launches, labels,
                                     timelines=timelines))
    print(f"\n{args.launches} launches per image (after one warm-up), {os.cpu_count()} CPUs, "
          f"load average at the end {os.getloadavg()[0]:.2f}\n")
    print("| image | bare p50 s | bare p95 s | browser reaches the tool p50 s | p95 s "
          "| overhead p50 s | mean overhead s | API says running p50 s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for image, (bares, pods, runs) in results.items():
        print(f"| {image} | {percentile(bares, 0.5):.3f} | {percentile(bares, 0.95):.3f} "
              f"| {percentile(pods, 0.5):.3f} | {percentile(pods, 0.95):.3f} "
              f"| {percentile(pods, 0.5) - percentile(bares, 0.5):+.3f} "
              f"| {statistics.mean(p - b for p, b in zip(pods, bares, strict=True)):+.3f} "
              f"| {percentile(runs, 0.5):.3f} |")
    for image, text in (timelines or {}).items():
        print(f"\nTimeline of the last launch of {image}:\n\n{text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
