"""Node daemon benchmark: pod launch latency against a bare ``docker run``, in one run.

    python -m bench.node_bench [--launches 20] [--image dit4c/test-tool:busybox]

For each of ``--launches`` rounds, interleaved so that both see the same machine load:

- **bare**: ``docker run -d`` of the tool image on the pods network, then an HTTP GET from the
  host to the container's address every 50 ms until it answers;
- **pod**: the node daemon's own command path (``Agent.handle`` of a ``start_instance`` with the
  real ``PodRunner``, durable records, the node enrolled with the real control plane and its
  state events sent to SQS on moto) from the command received to the tool answering inside
  the pod (probed from the pod's namespace every 50 ms): namespace holder, listener and auth
  helpers (the real ``helpers.*``), tool.

Prints p50/p95 of each and their ratio (goal: pod <= 3x bare) as a Markdown table. Everything it
creates carries the label ``dit4c.bench=<run>`` and is removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import aiohttp
import docker

from node_daemon.agent import Agent, Capacity
from node_daemon.credentials import CredentialBroker
from node_daemon.metrics import NodeMetrics
from node_daemon.network import ensure_pods_network
from node_daemon.pods import PodRunner, PodSettings
from node_daemon.portal import PortalClient
from node_daemon.queues import NodeQueues
from node_daemon.records import RecordStore
from protocol.messages import DiscardInstance
from protocol.tokens import SigningKey
from scripts import images
from scripts.build_images import ImageBuilder
from scripts.cleanup import remove_labelled
from tests.support.control_plane import control_plane
from tests.support.node import sample_start

PROBE_INTERVAL = 0.05


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def bare_launch(client: docker.DockerClient, image: str, port: int, network: str,
                labels: dict[str, str]) -> float:
    """Seconds from ``docker run -d`` to the tool answering at its address."""
    began = time.monotonic()
    container = client.containers.run(image, detach=True, network=network, labels=labels)
    try:
        address = client.api.inspect_container(container.id)["NetworkSettings"]["Networks"][
            network]["IPAddress"]
        while True:
            try:
                with urllib.request.urlopen(f"http://{address}:{port}/", timeout=1):
                    return time.monotonic() - began
            except (urllib.error.URLError, OSError):
                if time.monotonic() - began > 60:
                    raise RuntimeError("the bare container never answered") from None
                time.sleep(PROBE_INTERVAL)
    finally:
        container.remove(force=True)


async def run(launches: int, image: str, port: int) -> tuple[list[float], list[float]]:
    client = docker.from_env(timeout=120)
    run_id = uuid.uuid4().hex[:10]
    labels = {"dit4c.bench": run_id}
    network = f"dit4c-bench-{run_id}"
    ImageBuilder(client).ensure([images.TEST_TOOL, images.HELPER_BASE, images.HELPERS])
    ensure_pods_network(client, network, labels)
    try:
        with control_plane() as portal, tempfile.TemporaryDirectory() as data:
            async with aiohttp.ClientSession() as session:
                portal_client = PortalClient(portal.url, session)
                key = SigningKey.generate()
                enrolment = await portal_client.enroll(
                    join_token=portal.new_join_token(), key=key, name="bench", cpu=64,
                    memory_mb=1 << 20)
                queues = NodeQueues(CredentialBroker(
                    lambda: portal_client.credentials(enrolment.node_id, key)))
                pod_runner = PodRunner(client, PodSettings(
                    node_id=enrolment.node_id, network=network, helpers_image=images.HELPERS,
                    labels=labels))
                agent = Agent(node_id=enrolment.node_id, capacity=Capacity(64, 1 << 20),
                              records=RecordStore(Path(data) / "instances"), pods=pod_runner,
                              send=queues.send_event, metrics=NodeMetrics(), launch_timeout=120)
                try:
                    return await _rounds(agent, client, launches=launches, image=image,
                                         port=port, network=network, labels=labels)
                finally:
                    pod_runner.close()
    finally:
        remove_labelled(client, f"dit4c.bench={run_id}")
        client.close()


async def _rounds(agent: Agent, client: docker.DockerClient, *, launches: int, image: str,
                  port: int, network: str,
                  labels: dict[str, str]) -> tuple[list[float], list[float]]:
    """Seconds of each launch, bare and as a pod, interleaved; round 0 warms caches."""
    bare: list[float] = []
    pods: list[float] = []
    for round_ in range(launches + 1):
        seconds = await asyncio.to_thread(bare_launch, client, image, port, network, labels)
        instance_id = f"bench{labels['dit4c.bench']}{round_}"
        began = time.monotonic()
        await agent.handle(sample_start(instance_id, image, port=port))
        pod_seconds = time.monotonic() - began
        record = agent.records.get(instance_id)
        if record is None or record.state != "running":
            raise RuntimeError(f"launch {round_} did not run: "
                               f"{record.reason if record else 'no record'}")
        await agent.handle(DiscardInstance(instance_id=instance_id))
        if round_:
            bare.append(seconds)
            pods.append(pod_seconds)
            print(f"round {round_}: bare {seconds:.3f} s, pod {pod_seconds:.3f} s",
                  file=sys.stderr)
    return bare, pods


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--launches", type=int, default=20)
    parser.add_argument("--image", default=images.TEST_TOOL)
    parser.add_argument("--port", type=int, default=images.TEST_TOOL_PORT)
    args = parser.parse_args()
    bare, pods = asyncio.run(run(args.launches, args.image, args.port))
    print(f"\n{args.launches} launches of {args.image}, {os.cpu_count()} CPUs, "
          f"load average at the end {os.getloadavg()[0]:.2f}\n")
    print("| launch to answering | p50 s | p95 s | mean s |")
    print("| --- | ---: | ---: | ---: |")
    for name, values in (("bare `docker run`", bare), ("pod via the node daemon", pods)):
        print(f"| {name} | {percentile(values, 0.5):.3f} | {percentile(values, 0.95):.3f} "
              f"| {statistics.mean(values):.3f} |")
    print(f"| **ratio pod / bare** | **{percentile(pods, 0.5) / percentile(bare, 0.5):.2f}x** "
          f"| **{percentile(pods, 0.95) / percentile(bare, 0.95):.2f}x** "
          f"| {statistics.mean(pods) / statistics.mean(bare):.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
