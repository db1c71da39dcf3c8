"""Image server benchmark: saving and launching a 200 MB saved image, and exporting it.

    python -m bench.image_bench [--rounds 3] [--megabytes 200]

Each round writes ``--megabytes`` into a fresh instance's tool container (half random, half a
repeated binary: some of it compresses, some not), stops it, and then, in alternating order so
that both see the same machine and page cache:

- **save by hand**: ``docker commit`` + ``docker push`` (the engine, gzip) with a push token;
- **save, dit4c**: the node daemon's command path (``Agent.handle(save_instance)``): commit,
  export into the upload helper's volume, the helper's push over the pods network (``gzip``,
  and again with ``none``), clean-up, ``saved``;
- **launch by hand** on the second engine: ``docker pull`` of the pushed image, then
  ``docker run`` until the tool answers HTTP;
- **launch, dit4c** on the second engine: ``Agent.handle(start_instance)`` of the saved image
  with a pull token, until the pod's tool and auth helper answer;
- **export**: the exporter streaming the saved image as a ``docker save`` tar (time to the
  first byte, and to the last), against ``docker save`` of the same image on the engine.

The image server is Debian's ``docker-registry`` with token auth (on loopback, and on the pods
gateway for the upload helper), tokens signed by a key store over moto. Prints one Markdown
table with medians and the ratios (goal: dit4c <= 1.2x by hand). Everything it makes carries
``dit4c.bench=<run>`` and is removed at the end, the second engine with it.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path

import docker

from node_daemon.agent import Agent, Capacity
from node_daemon.metrics import NodeMetrics
from node_daemon.network import ensure_pods_network
from node_daemon.pods import PodRunner, PodSettings, container_name
from node_daemon.records import RecordStore
from protocol import pod
from protocol.messages import (
    DiscardInstance,
    InstanceStateEvent,
    Message,
    RegistryAccess,
    SaveInstance,
    StopInstance,
)
from protocol.registry import EXPORT_CLAIM, PULL, PUSH, parse_reference, repository_access
from scripts import images
from scripts.build_images import ImageBuilder, pinned
from scripts.cleanup import remove_labelled
from tests.ports import free_port
from tests.support.engines import SecondEngine
from tests.support.node import sample_start
from tests.support.registry import RegistryServer, key_store

PROBE_INTERVAL = 0.05


class Node:
    """An agent on one engine, its events kept."""

    def __init__(self, client: docker.DockerClient, network: str, labels: dict[str, str],
                 data: Path, helpers: str, *, compression: str = "gzip") -> None:
        ensure_pods_network(client, network, labels)
        self.client = client
        self.events: list[InstanceStateEvent] = []
        node_id = f"bench{uuid.uuid4().hex[:8]}"
        self.pods = PodRunner(client, PodSettings(node_id=node_id, network=network,
                                                  helpers_image=helpers, labels=labels))

        async def send(message: Message) -> None:
            if isinstance(message, InstanceStateEvent):
                self.events.append(message)

        self.agent = Agent(node_id=node_id, capacity=Capacity(64, 1 << 20),
                           records=RecordStore(data / "instances"), pods=self.pods, send=send,
                           metrics=NodeMetrics(), launch_timeout=300,
                           upload_compression=compression)

    def handle(self, message: Message) -> float:
        began = time.monotonic()
        asyncio.run(self.agent.handle(message))
        return time.monotonic() - began

    def state(self, iid: str) -> InstanceStateEvent:
        return [e for e in self.events if e.instance_id == iid][-1]


def timed(work: Callable[[], object]) -> float:
    began = time.monotonic()
    work()
    return time.monotonic() - began


def fill(node: Node, iid: str, megabytes: int) -> None:
    tool = node.client.containers.get(container_name(iid, pod.ROLE_TOOL))
    half = megabytes // 2
    script = (f"head -c {half}m /dev/urandom > /work.random && : > /work.text && "
              f"while [ $(stat -c %s /work.text) -lt {half * 1048576} ]; do "
              "cat /bin/busybox >> /work.text; done")
    code, out = tool.exec_run(["sh", "-c", script])
    if code != 0:
        raise RuntimeError(f"filling the tool container failed: {out!r}")


def push_by_hand(client: docker.DockerClient, server: RegistryServer, container: str,
                 repository: str, labels: dict[str, str]) -> tuple[float, str]:
    reference = f"{server.address}/{repository}"
    token = server.token([repository_access(repository, PUSH)])
    began = time.monotonic()
    client.api.commit(container, repository=reference, tag="saved",
                      changes=[f"LABEL {k}={v}" for k, v in labels.items()])
    digest = ""
    for event in client.api.push(reference, tag="saved", stream=True, decode=True,
                                 auth_config={"registrytoken": token}):
        if "error" in event:
            raise RuntimeError(event["error"])
        digest = (event.get("aux") or {}).get("Digest", digest)
    seconds = time.monotonic() - began
    client.images.remove(f"{reference}:saved")
    return seconds, digest


def launch_by_hand(engine: SecondEngine, server: RegistryServer, repository: str, digest: str,
                   *, network: str, labels: dict[str, str]) -> tuple[float, float]:
    """(seconds to pull, seconds to pull + run until the tool answers)."""
    token = server.token([repository_access(repository, PULL)])
    reference = f"{server.address}/{repository}@{digest}"
    began = time.monotonic()
    engine.pull(reference, token)
    pulled = time.monotonic() - began
    container = engine.client.containers.run(reference, detach=True, network=network,
                                             labels=labels)
    try:
        address = engine.client.api.inspect_container(container.id)["NetworkSettings"][
            "Networks"][network]["IPAddress"]
        while True:
            try:
                with urllib.request.urlopen(f"http://{address}:{images.TEST_TOOL_PORT}/",
                                            timeout=1):
                    break
            except (urllib.error.URLError, OSError):
                if time.monotonic() - began > 300:
                    raise RuntimeError("the pulled image never answered") from None
                time.sleep(PROBE_INTERVAL)
        return pulled, time.monotonic() - began
    finally:
        container.remove(force=True)
        engine.client.images.remove(reference, force=True)


def export_times(port: int, link: str) -> tuple[float, float, int]:
    """(seconds to the first byte of the body, to the last, bytes)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    began = time.monotonic()
    connection.request("GET", link)
    response = connection.getresponse()
    if response.status != 200:
        raise RuntimeError(f"export answered {response.status}: {response.read()[:200]!r}")
    first = response.read(1)
    ttfb = time.monotonic() - began
    total = len(first)
    while chunk := response.read(1 << 20):
        total += len(chunk)
    connection.close()
    return ttfb, time.monotonic() - began, total


def docker_save_times(client: docker.DockerClient, image: str) -> tuple[float, float]:
    began = time.monotonic()
    stream = client.api.get_image(image)
    next(iter(stream))
    ttfb = time.monotonic() - began
    for _ in stream:
        pass
    return ttfb, time.monotonic() - began


def run(rounds: int, megabytes: int) -> dict[str, list[float]]:  # noqa: PLR0915 - one script
    client = docker.from_env(timeout=600)
    run_id = uuid.uuid4().hex[:10]
    labels = {"dit4c.bench": run_id}
    builder = ImageBuilder(client)
    builder.ensure([images.TEST_TOOL, images.HELPER_BASE, images.HELPERS])
    # The recipe's own tag: on an engine shared with other checkouts the dev tag may move.
    helpers = pinned(images.HELPERS, builder.helpers().recipe)
    results: dict[str, list[float]] = {name: [] for name in (
        "save by hand", "save gzip", "save none", "pull by hand", "launch by hand",
        "launch", "export ttfb", "export total", "docker save ttfb", "docker save total")}
    engine = SecondEngine(f"b{run_id[:8]}", labels=labels).start()
    exporter: subprocess.Popen[bytes] | None = None
    servers: list[RegistryServer] = []
    try:
        engine.load_from(client, [helpers])
        with key_store() as keys, tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            nodes = {mode: Node(client, f"dit4c-bench-{run_id}", labels, root / mode, helpers,
                                compression=mode) for mode in ("gzip", "none")}
            node_b = Node(engine.client, f"dit4c-bench-{run_id}", labels, root / "b", helpers)
            server = RegistryServer(root / "registry", keys).start()
            servers.append(server)
            servers.append(server.beside(nodes["gzip"].pods.pods_gateway()).start())
            pods_url = f"http://host.docker.internal:{server.address.rsplit(':', 1)[1]}"
            export_port = free_port()
            exporter = subprocess.Popen(
                [sys.executable, "-m", "image_export"], stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, env={
                    **os.environ, "DIT4C_EXPORT_LISTEN": f"127.0.0.1:{export_port}",
                    "DIT4C_EXPORT_REGISTRY_URL": server.url})
            for round_ in range(rounds):
                for mode, node in nodes.items():
                    # Two instances filled alike: one saved by hand, one by dit4c (a save
                    # removes the pod, so they cannot share one).
                    iid, twin = f"r{round_}{mode[0]}{run_id}", f"h{round_}{mode[0]}{run_id}"
                    for each in (iid, twin) if mode == "gzip" else (iid,):
                        node.handle(sample_start(each, images.TEST_TOOL))
                        fill(node, each, megabytes)
                        node.handle(StopInstance(instance_id=each, grace_seconds=1))
                    hand_repo = f"users/hand/{twin}"
                    repository = f"users/bench/{iid}"
                    save = SaveInstance(
                        instance_id=iid, image=f"{server.address}/{repository}:saved",
                        registry=RegistryAccess(registry=server.address, token=server.token(
                            [repository_access(repository, PUSH)])), upload_url=pods_url)
                    hand = 0.0
                    if mode == "gzip" and round_ % 2 == 1:
                        hand, hand_digest = push_by_hand(client, server,
                                                         container_name(twin, pod.ROLE_TOOL),
                                                         hand_repo, labels)
                    ours = node.handle(save)
                    if mode == "gzip" and round_ % 2 == 0:
                        hand, hand_digest = push_by_hand(client, server,
                                                         container_name(twin, pod.ROLE_TOOL),
                                                         hand_repo, labels)
                    saved = node.state(iid)
                    if saved.state != "saved":
                        raise RuntimeError(f"save {iid}: {saved.state} {saved.reason}")
                    results[f"save {mode}"].append(ours)
                    node.handle(DiscardInstance(instance_id=iid))
                    print(f"round {round_} {mode}: dit4c {ours:.2f} s"
                          + (f", by hand {hand:.2f} s" if hand else ""), file=sys.stderr)
                    if mode != "gzip":
                        continue
                    results["save by hand"].append(hand)
                    node.handle(DiscardInstance(instance_id=twin))
                    reference = parse_reference(str(saved.image))
                    pulled, by_hand = launch_by_hand(engine, server, hand_repo, hand_digest,
                                                     network=f"dit4c-bench-{run_id}",
                                                     labels=labels)
                    derived = f"d{round_}{run_id}"
                    token = server.token([repository_access(reference.repository, PULL)])
                    ours = node_b.handle(sample_start(derived, str(saved.image), registry=(
                        RegistryAccess(registry=server.address, token=token))))
                    if node_b.state(derived).state != "running":
                        raise RuntimeError(f"launch {derived}: {node_b.state(derived).reason}")
                    node_b.handle(DiscardInstance(instance_id=derived))
                    engine.client.images.remove(str(saved.image), force=True)
                    results["pull by hand"].append(pulled)
                    results["launch by hand"].append(by_hand)
                    results["launch"].append(ours)
                    print(f"round {round_}: launch by hand {by_hand:.2f} s (pull {pulled:.2f}),"
                          f" dit4c {ours:.2f} s", file=sys.stderr)
                    link = "/export/" + server.token(
                        [repository_access(reference.repository, PULL)],
                        extra={EXPORT_CLAIM: {"repository": reference.repository,
                                              "digest": reference.digest, "name": "bench"}})
                    ttfb, total, size = export_times(export_port, link)
                    results["export ttfb"].append(ttfb)
                    results["export total"].append(total)
                    local = f"{server.address}/{hand_repo}@{hand_digest}"
                    client.images.pull(f"{server.address}/{hand_repo}", tag=hand_digest,
                                       auth_config={"registrytoken": server.token(
                                           [repository_access(hand_repo, PULL)])})
                    save_ttfb, save_total = docker_save_times(client, local)
                    client.images.remove(local, force=True)
                    results["docker save ttfb"].append(save_ttfb)
                    results["docker save total"].append(save_total)
                    print(f"round {round_}: export ttfb {ttfb * 1000:.0f} ms, {size >> 20} MiB "
                          f"in {total:.2f} s; docker save ttfb {save_ttfb * 1000:.0f} ms, "
                          f"{save_total:.2f} s", file=sys.stderr)
            for node in (*nodes.values(), node_b):
                node.pods.close()
    finally:
        if exporter is not None:
            exporter.terminate()
            exporter.wait(10)
        for server in servers:
            server.stop()
        engine.stop()
        remove_labelled(client, f"dit4c.bench={run_id}")
        client.close()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--megabytes", type=int, default=200)
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    r = run(args.rounds, args.megabytes)
    med = {name: statistics.median(values) for name, values in r.items()}
    print(f"\n{args.rounds} rounds, {args.megabytes} MB written in the instance, "
          f"{os.cpu_count()} CPUs, load average {load_before:.2f} before, "
          f"{os.getloadavg()[0]:.2f} after\n")
    print("| what | by hand (median s) | dit4c (median s) | ratio |")
    print("| --- | ---: | ---: | ---: |")
    for label, hand, ours in (
            ("save (commit + push), gzip", "save by hand", "save gzip"),
            ("save, uncompressed layers", "save by hand", "save none"),
            ("derived launch on another node (vs pull + run)", "launch by hand", "launch"),
            ("derived launch (vs pull alone)", "pull by hand", "launch"),
            ("export: time to first byte (vs docker save)", "docker save ttfb", "export ttfb"),
            ("export: whole tar (vs docker save)", "docker save total", "export total")):
        print(f"| {label} | {med[hand]:.3f} | {med[ours]:.3f} | **{med[ours] / med[hand]:.2f}x** |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
