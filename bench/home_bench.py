"""A node at home, timed: join to online, the first instance on a fresh node, an upgrade.

    python -m bench.home_bench [--rounds 2]

Runs ``python -m infra.local run`` (the hosted deployment: portal, router, image server with
the helpers image it publishes at start; its own node drained) and, each round, two fresh
Docker engines on this machine with no image at all (tests/support/engines.py):

- **direct**, on the first: what a node has to do by hand: ``docker pull`` of the helpers
  image by its digest and of the tool from the image server (with the admin's password),
  ``docker run -d`` of the tool, then a GET of the container's address every 50 ms until 200;
- **dit4c**, on the second: the join command the portal made (``dit4c-node join ... &&
  dit4c-node run``) from a clean virtualenv holding only the node package; **join → online**
  is until the portal lists the node with a heartbeat and its helpers ``ok`` (the helpers pull
  included); then a user launches the tool and GETs the instance URL through the router every
  50 ms (with the OAuth sign-in) until the tool answers: **first instance** is from the join
  command to that answer.

Then the **upgrade**: while a prober GETs the instance through the router every 50 ms, the
daemon is stopped (SIGTERM), the wheel installed again (``pip install --force-reinstall``, as
an upgrade does) and ``dit4c-node run`` started again; the prober runs until the portal has a
heartbeat of the new daemon, plus 3 s. It reports how many requests failed and the longest gap.

Goals (issue 12): join → online < 30 s; first instance on a fresh node < 2 min; no failed
request during the upgrade. Prints a Markdown table with the machine's load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker

from scripts import images
from scripts.build_images import ImageBuilder, pinned
from scripts.cleanup import remove_labelled
from tests.ports import free_port
from tests.support.engines import SecondEngine
from tests.support.home_node import (
    TOOL_PORT,
    ShellCommand,
    clean_env,
    node_virtualenv,
    pip_install,
    publish_tool,
    wait_for,
)
from tests.support.local_stack import Browser, StackProcess, log_in

ADMIN_PASSWORD = "admin-bench-password"  # noqa: S105 - a throwaway stack's
USER_PASSWORD = "bench-user-password"  # noqa: S105 - a throwaway stack's
TOOL_TEXT = b"busybox httpd is serving this page"
WAIT = 180.0
PROBE_SECONDS = 0.05


@dataclass
class Deployment:
    stack: StackProcess
    ports: dict[str, int]
    admin: Browser
    user: Browser
    image_id: str
    tool: str
    helpers: str

    @property
    def portal(self) -> str:
        return f"http://localhost:{self.ports['PORTAL']}"

    def call(self, who: Browser, method: str, path: str, body: Any = None) -> Any:
        status, _, content = who.request(f"{self.portal}{path}", method, body)
        if status >= 400:
            raise RuntimeError(f"{method} {path}: {status} {content[:300]!r}")
        return json.loads(content) if content else None

    def nodes(self) -> list[dict[str, Any]]:
        listed: list[dict[str, Any]] = self.call(self.admin, "GET",
                                                 "/api/clusters/default/nodes")["nodes"]
        return listed


@dataclass
class Round:
    direct_seconds: float = 0.0
    join_seconds: float = 0.0
    online_seconds: float = 0.0
    first_instance_seconds: float = 0.0
    launch_seconds: float = 0.0
    upgrade: dict[str, float] = field(default_factory=dict)


@dataclass
class HomeRun:
    """The node a round joined, and what restarting it needs."""

    node: ShellCommand
    env: dict[str, str]
    work: Path
    node_bin: Path
    node_id: str
    url: str


@contextmanager
def deployment(tmp: Path, helpers_source: str, client: docker.DockerClient,
               labels: dict[str, str]) -> Iterator[Deployment]:
    ports = {name: free_port() for name in ("PORTAL", "ROUTER", "AWS", "REGISTRY", "EXPORT")}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "DIT4C_"))}
    env.update({f"DIT4C_{name}_PORT": str(port) for name, port in ports.items()})
    env.update({"DIT4C_DATA_DIR": str(tmp / "data"), "DIT4C_STACK_NAME": "dit4c-home-bench",
                "DIT4C_ADMIN_PASSWORD": ADMIN_PASSWORD, "DIT4C_PUBLISH_HELPERS": "1",
                "DIT4C_NODE_HELPERS_IMAGE": helpers_source,
                "DIT4C_NODE_PODS_NETWORK": f"dit4c-home-bench-{uuid.uuid4().hex[:8]}",
                "DIT4C_NODE_LABELS": ",".join(f"{k}={v}" for k, v in labels.items()),
                "DIT4C_NODE_METRICS_LISTEN": "127.0.0.1:0", "DIT4C_ROUTER_ACCESS_LOG": "0"})
    stack = StackProcess(env)
    try:
        ready = stack.wait_ready()
        helpers = next(line.split()[1] for line in ready.splitlines()
                       if line.strip().startswith("helpers:"))
        admin, user = Browser(), Browser()
        assert log_in(admin, ports["PORTAL"], "admin", ADMIN_PASSWORD) == 200
        probe = Deployment(stack, ports, admin, user, "", "", helpers)
        (local,) = probe.nodes()
        probe.call(admin, "POST", f"/api/nodes/{local['id']}/drain")
        registry = f"127.0.0.1:{ports['REGISTRY']}"
        tool = publish_tool(client, images.TEST_TOOL, f"{registry}/tools/bench:1", "admin",
                            ADMIN_PASSWORD)
        entry = probe.call(admin, "POST", "/api/images",
                           {"name": "bench tool", "image": tool, "port": TOOL_PORT})
        probe.call(admin, "POST", "/api/users", {"username": "bench",
                                                 "password": USER_PASSWORD})
        assert log_in(user, ports["PORTAL"], "bench", USER_PASSWORD) == 200
        yield Deployment(stack, ports, admin, user, entry["id"], tool, helpers)
    except Exception:
        print(stack.output()[-4000:], file=sys.stderr)
        raise
    finally:
        stack.kill()


def direct(engine: SecondEngine, d: Deployment) -> float:
    """Pull the helpers and the tool, run the tool, wait for its page: seconds."""
    auth = {"username": "admin", "password": ADMIN_PASSWORD}
    started = time.monotonic()
    name, _, digest = d.helpers.partition("@")
    repository = name.rsplit(":", 1)[0]
    for event in engine.client.api.pull(repository, tag=digest, stream=True, decode=True,
                                        auth_config=auth):
        if "error" in event:
            raise RuntimeError(event["error"])
    tool_repo, tag = d.tool.rsplit(":", 1)
    for event in engine.client.api.pull(tool_repo, tag=tag, stream=True, decode=True,
                                        auth_config=auth):
        if "error" in event:
            raise RuntimeError(event["error"])
    container = engine.client.containers.run(d.tool, detach=True)
    try:
        container.reload()
        address = container.attrs["NetworkSettings"]["IPAddress"]

        def answers() -> bool:
            try:
                with urllib.request.urlopen(f"http://{address}:{TOOL_PORT}/", timeout=2) as r:
                    return bool(r.status == 200)
            except OSError:
                return False

        wait_for(answers, "the tool's page", WAIT, interval=PROBE_SECONDS)
        return time.monotonic() - started
    finally:
        container.remove(force=True)


def reached(d: Deployment, url: str) -> bool:
    try:
        status, _, body = d.user.request(url + "/")
    except OSError:
        return False
    return status == 200 and TOOL_TEXT in body


def dit4c_round(engine: SecondEngine, d: Deployment, node_bin: Path, work: Path,
                result: Round) -> None:
    command = d.call(d.admin, "POST", "/api/clusters/default/join-tokens", {})["command"]
    known = {n["id"] for n in d.nodes()}
    env = clean_env(node_bin, work, {
        "DOCKER_HOST": engine.host, "DIT4C_NODE_METRICS_LISTEN": "127.0.0.1:0",
        "DIT4C_NODE_HEARTBEAT_SECONDS": "2",
        # The deployment is on this host: the ports its pods may reach (egress policy).
        "DIT4C_NODE_POD_HOST_PORTS": ",".join(
            str(d.ports[name]) for name in ("ROUTER", "PORTAL", "AWS", "REGISTRY"))})
    started = time.monotonic()
    node = ShellCommand(command, env, work, work / "node.log")
    try:
        wait_for(lambda: "joined cluster" in node.tail(), "join", WAIT, node, interval=0.05)
        result.join_seconds = time.monotonic() - started
        home = wait_for(lambda: next((n for n in d.nodes() if n["id"] not in known
                                      and n["helpers"] == "ok"
                                      and n["heartbeat_age_seconds"] is not None), None),
                        "online", WAIT, node, interval=0.1)
        result.online_seconds = time.monotonic() - started
        launched = time.monotonic()
        iid = d.call(d.user, "POST", "/api/instances", {"image_id": d.image_id})["id"]
        # The URL is answered once the instance runs (as the portal shows its link then).
        url: str = wait_for(lambda: d.call(d.user, "GET", f"/api/instances/{iid}")["url"],
                            "the instance's URL", WAIT, node, interval=PROBE_SECONDS)
        wait_for(lambda: reached(d, url), "the tool through the router", WAIT, node,
                 interval=PROBE_SECONDS)
        result.first_instance_seconds = time.monotonic() - started
        result.launch_seconds = time.monotonic() - launched
        result.upgrade = upgrade(d, HomeRun(node, env, work, node_bin, home["id"], url))
    finally:
        node.stop()


def upgrade(d: Deployment, run: HomeRun) -> dict[str, float]:
    url, node_id = run.url, run.node_id
    outcomes: list[tuple[float, bool]] = []
    stop = threading.Event()

    def probe() -> None:
        while not stop.is_set():
            outcomes.append((time.monotonic(), reached(d, url)))
            time.sleep(PROBE_SECONDS)

    prober = threading.Thread(target=probe, daemon=True)
    prober.start()
    time.sleep(2)
    stopped_at = time.monotonic()
    run.node.stop(60)
    (wheel,) = (run.work.parent / "node-venv" / "dist").glob("*.whl")
    pip_install(run.node_bin, wheel, "--no-deps", "--force-reinstall")
    beats = {n["id"]: n["heartbeat_age_seconds"] for n in d.nodes()}
    restarted = ShellCommand("dit4c-node run", run.env, run.work, run.work / "node2.log")
    try:
        wait_for(lambda: any(n["id"] == node_id and n["heartbeat_age_seconds"] is not None
                             and n["heartbeat_age_seconds"] < (beats.get(node_id) or 99)
                             and n["heartbeat_age_seconds"] < 1.5 for n in d.nodes()),
                 "a heartbeat of the new daemon", WAIT, restarted, interval=0.1)
        back = time.monotonic() - stopped_at
        time.sleep(3)
    finally:
        stop.set()
        prober.join(10)
        restarted.stop()
    failed = [t for t, ok in outcomes if not ok]
    gap, last_ok = 0.0, outcomes[0][0] if outcomes else 0.0
    for t, ok in outcomes:
        if ok:
            gap, last_ok = max(gap, t - last_ok), t
    return {"requests": len(outcomes), "failed": len(failed), "longest_gap": gap,
            "daemon_away": back}


def one_round(d: Deployment, node_bin: Path, work: Path, i: int) -> Round:
    result = Round()
    work.mkdir()
    for kind in ("direct", "dit4c"):
        engine = SecondEngine(f"b{kind[0]}{i}{uuid.uuid4().hex[:4]}").start()
        try:
            if kind == "direct":
                result.direct_seconds = direct(engine, d)
            else:
                dit4c_round(engine, d, node_bin, work, result)
        finally:
            engine.stop()
    print(f"round {i + 1}: {result}", file=sys.stderr)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    client = docker.from_env(timeout=120)
    built = {r.name: r for r in ImageBuilder(client).ensure(
        [images.TEST_TOOL, images.HELPER_BASE, images.HELPERS])}
    helpers_source = pinned(images.HELPERS, built[images.HELPERS].recipe)
    results = []
    run_id = uuid.uuid4().hex[:10]
    with tempfile.TemporaryDirectory(prefix="dit4c-home-bench-") as scratch:
        tmp = Path(scratch)
        node_bin = node_virtualenv(tmp / "node-venv")
        try:
            with deployment(tmp, helpers_source, client, {"dit4c.bench": run_id}) as d:
                for i in range(args.rounds):
                    results.append(one_round(d, node_bin, tmp / f"round-{i}", i))
        finally:
            remove_labelled(client, f"dit4c.bench={run_id}")
    load = os.getloadavg()

    def median(values: list[float]) -> str:
        return f"{statistics.median(values):.1f} s"

    print(f"\n{args.rounds} round(s), fresh engines each, {os.cpu_count()} CPUs, load average "
          f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}\n")
    print("| what (median) | direct | dit4c | goal |")
    print("| --- | --- | --- | --- |")
    print(f"| join command → joined (helpers pulled, checked) | | "
          f"{median([r.join_seconds for r in results])} | |")
    print(f"| join command → online in the portal | | "
          f"{median([r.online_seconds for r in results])} | < 30 s |")
    print(f"| fresh machine → tool answers (pulls included) | "
          f"{median([r.direct_seconds for r in results])} | "
          f"{median([r.first_instance_seconds for r in results])} | < 2 min |")
    print(f"| launch → tool answers through the router (helpers there) | | "
          f"{median([r.launch_seconds for r in results])} | |")
    for i, r in enumerate(results, 1):
        u = r.upgrade
        print(f"| upgrade, round {i}: requests failed / sent, longest gap, daemon away | | "
              f"{u['failed']:.0f} / {u['requests']:.0f}, {u['longest_gap']:.2f} s, "
              f"{u['daemon_away']:.1f} s | 0 failed |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
