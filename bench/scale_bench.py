"""Many launches at once: the control plane's scheduling against simulated nodes, no Docker.

    python -m bench.scale_bench [--launches 100] [--nodes 10] [--pod-seconds 0.5]

The real control plane (``tests/support/control_plane.py``: the Chalice app on a socket over
moto's server mode, tables and queues from ``template.yaml``) and its events consumer (the
events queue polled as the local stack does, each message through ``on_event``'s
``Events.handle_text``, by ``--consumers`` threads at once, as Lambda runs several batches at
a time). ``--nodes`` fake node processes (``python -m bench.scale_bench node``) each enrol
with a join token and their own key, fetch STS credentials, heartbeat every second, long-poll
their own queue, and answer every ``start_instance`` with ``starting`` and, after
``--pod-seconds``, ``running`` — no Docker — until SIGTERM. Each declares room for 4 CPUs
and 4 GiB; the catalog entry asks 0.5 CPU and 512 MB, so 10 nodes hold 80 instances: the
launches beyond that must wait (``pending``), never over-commit a node.

``--launches`` users then launch one instance each, all at once (``POST /api/instances`` in
parallel). Reported: time from the call to ``running`` (p50/p99) for those placed; instances
still pending or stuck in between at the end; nodes that were sent more than they declared
(each fake node checks its own); and the control plane's DynamoDB and SQS calls per launch
(counted on its boto3 clients, events consumer included), and the nodes' SQS calls.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiohttp
import requests

from bench.node_bench import percentile
from control_plane.bodies import NewImage, NewUser
from node_daemon.credentials import CredentialBroker
from node_daemon.portal import PortalClient
from node_daemon.queues import NodeQueues
from protocol.messages import (
    InstanceStateEvent,
    NodeHeartbeat,
    StartInstance,
    decode,
)
from protocol.tokens import SigningKey
from tests.support.control_plane import control_plane

ROOT = Path(__file__).resolve().parent.parent
NODE_CPU = 4.0
NODE_MEMORY_MB = 4096
TOOL_CPU = 0.5
TOOL_MEMORY_MB = 512
PASSWORD = "a-password-for-the-bench"  # noqa: S105 - a throwaway control plane


# --- a fake node (its own process) ---------------------------------------------------------

async def fake_node(portal: str, token: str, name: str, pod_seconds: float) -> dict[str, Any]:
    """Enrol, then heartbeat and answer start commands until SIGTERM."""
    stopping = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopping.set)
    key = SigningKey.generate()
    calls: Counter[str] = Counter()
    got: list[str] = []
    over = False
    async with aiohttp.ClientSession() as session:
        client = PortalClient(portal, session)
        enrolment = await client.enroll(join_token=token, key=key, name=name, cpu=NODE_CPU,
                                        memory_mb=NODE_MEMORY_MB)
        node_id = enrolment.node_id
        queues = NodeQueues(CredentialBroker(lambda: client.credentials(node_id, key)))
        used = {"cpu": 0.0, "memory_mb": 0.0}
        running: list[str] = []

        async def heartbeat() -> None:
            while True:
                calls["sqs:SendMessage"] += 1
                await queues.send_event(NodeHeartbeat(
                    node_id=node_id, version="bench", cpu_total=NODE_CPU,
                    memory_mb_total=NODE_MEMORY_MB, cpu_used=used["cpu"],
                    memory_mb_used=int(used["memory_mb"]), load=0.0, running=list(running)))
                await asyncio.sleep(1)

        async def launch(start: StartInstance) -> None:
            for state in ("starting", "running"):
                if state == "running":
                    await asyncio.sleep(pod_seconds)
                    running.append(start.instance_id)
                calls["sqs:SendMessage"] += 1
                await queues.send_event(InstanceStateEvent(
                    node_id=node_id, instance_id=start.instance_id, state=state))

        beating = asyncio.ensure_future(heartbeat())
        tasks = []
        while not stopping.is_set():
            calls["sqs:ReceiveMessage"] += 1
            for received in await queues.receive(wait_seconds=1):
                message = decode(received.body)
                if isinstance(message, StartInstance) and message.instance_id not in got:
                    got.append(message.instance_id)
                    used["cpu"] += message.cpu
                    used["memory_mb"] += message.memory_mb
                    over = over or used["cpu"] > NODE_CPU or used["memory_mb"] > NODE_MEMORY_MB
                    tasks.append(asyncio.ensure_future(launch(message)))
                calls["sqs:DeleteMessage"] += 1
                await queues.delete(received.receipt)
        beating.cancel()
        await asyncio.gather(*tasks, beating, return_exceptions=True)
    return {"node_id": node_id, "instances": got, "over_committed": over,
            "calls": dict(calls)}


def node_main(argv: list[str]) -> int:
    portal, token, name, pod_seconds = argv
    result = asyncio.run(fake_node(portal, token, name, float(pod_seconds)))
    print(json.dumps(result), flush=True)
    return 0


# --- the run --------------------------------------------------------------------------------

def count_calls(clients: Any, counter: Counter[str]) -> None:
    """Count every DynamoDB and SQS call the control plane's own clients make."""
    lock = threading.Lock()

    def counted(service: str) -> Any:
        def before_call(model: Any, **_: Any) -> None:
            with lock:
                counter[f"{service}:{model.name}"] += 1
        return before_call

    for service in ("dynamodb", "sqs"):
        clients.get(service).meta.events.register("before-call", counted(service))


def consume_events(plane: Any, stop: threading.Event) -> None:
    """The events consumer, as the local stack runs it (``on_event`` per message)."""
    sqs = plane.services.clients.get("sqs")
    while not stop.is_set():
        got = sqs.receive_message(QueueUrl=plane.events_queue_url, MaxNumberOfMessages=10,
                                  WaitTimeSeconds=1)
        for message in got.get("Messages", []):
            plane.services.events.handle_text(message["Body"])
            sqs.delete_message(QueueUrl=plane.events_queue_url,
                               ReceiptHandle=message["ReceiptHandle"])


def main() -> int:  # noqa: PLR0912, PLR0915 - one linear script
    if sys.argv[1:2] == ["node"]:
        return node_main(sys.argv[2:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--launches", type=int, default=100)
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--pod-seconds", type=float, default=0.5)
    parser.add_argument("--consumers", type=int, default=4,
                        help="events consumers at once (Lambda runs batches concurrently)")
    args = parser.parse_args()
    calls: Counter[str] = Counter()
    with control_plane() as plane, tempfile.TemporaryDirectory() as tmp:
        svc = plane.services
        count_calls(svc.clients, calls)
        image = svc.catalog.add(NewImage(name="bench", image="dit4c/test-tool:busybox",
                                         port=8080, cpu=TOOL_CPU, memory_mb=TOOL_MEMORY_MB))
        users = [f"user{i:03d}" for i in range(args.launches)]
        for name in users:
            svc.accounts.create_user(NewUser(username=name, password=PASSWORD))
        stop = threading.Event()
        consumers = [threading.Thread(target=consume_events, args=(plane, stop), daemon=True)
                     for _ in range(args.consumers)]
        for consumer in consumers:
            consumer.start()
        logs = [Path(tmp) / f"node{i}.json" for i in range(args.nodes)]
        nodes = []
        for i, log in enumerate(logs):
            with log.open("w") as out:
                nodes.append(subprocess.Popen(
                    [sys.executable, "-m", "bench.scale_bench", "node", plane.url,
                     plane.new_join_token(), f"node{i}", str(args.pod_seconds)],
                    stdout=out, cwd=ROOT,
                    env={**os.environ, "PYTHONPATH": str(ROOT)}))
        deadline = time.monotonic() + 30
        while len(svc.nodes.in_cluster(plane.cluster_id)) < args.nodes:  # all enrolled
            if time.monotonic() > deadline:
                raise RuntimeError("the fake nodes did not enrol")
            time.sleep(0.2)
        time.sleep(2)  # first heartbeats in
        sessions = []
        for name in users:
            http = requests.Session()
            response = http.post(f"{plane.url}/api/login", json={
                "username": name, "password": PASSWORD}, timeout=30)
            response.raise_for_status()
            http.headers["X-CSRF-Token"] = response.json()["csrf_token"]
            sessions.append(http)
        before = Counter(calls)

        answered: dict[str, float] = {}

        def launch(http: requests.Session) -> tuple[str, float]:
            began = time.monotonic()
            response = http.post(f"{plane.url}/api/instances",
                                 json={"image_id": image.image_id, "cluster_id": plane.cluster_id},
                                 timeout=120)
            response.raise_for_status()
            answered[response.json()["id"]] = time.monotonic() - began
            return response.json()["id"], began

        with ThreadPoolExecutor(max_workers=args.launches) as pool:
            launched = list(pool.map(launch, sessions))
        running_at: dict[str, float] = {}
        states: dict[str, str] = {}
        api_seconds = list(answered.values())
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            for (instance_id, _), http in zip(launched, sessions, strict=True):
                if instance_id in running_at:
                    continue
                state = http.get(f"{plane.url}/api/instances/{instance_id}",
                                 timeout=30).json()["state"]
                states[instance_id] = state
                if state == "running":
                    running_at[instance_id] = time.monotonic()
            if len(running_at) + sum(s == "pending" for s in states.values()) == len(launched):
                break
            time.sleep(0.1)
        made = Counter(calls) - before
        stop.set()
        results = []
        for process in nodes:
            process.send_signal(signal.SIGTERM)
        for process, log in zip(nodes, logs, strict=True):
            process.wait(timeout=30)
            results.append(json.loads(log.read_text().strip().splitlines()[-1]))
        for consumer in consumers:
            consumer.join(5)
    times = [running_at[i] - began for i, began in launched if i in running_at]
    final = Counter(states[i] if i not in running_at else "running" for i, _ in launched)
    capacity = args.nodes * min(int(NODE_CPU / TOOL_CPU), NODE_MEMORY_MB // TOOL_MEMORY_MB)
    over = [r["node_id"] for r in results if r["over_committed"]]
    node_calls: Counter[str] = Counter()
    for r in results:
        node_calls.update(r["calls"])
    per = len(launched)
    print(f"\n{per} launches at once onto {args.nodes} fake nodes (room for {capacity}); "
          f"pods 'start' in {args.pod_seconds:g} s; {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.2f}\n")
    print("| running | pending (no room) | other states | over-committed nodes "
          "| launch call p50 s | p99 s | call to running p50 s | p99 s |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    other = {k: v for k, v in final.items() if k not in ("running", "pending")}
    print(f"| {final['running']} | {final['pending']} | {other or 0} | {len(over)} "
          f"| {statistics.median(api_seconds):.2f} | {percentile(api_seconds, 0.99):.2f} "
          f"| {statistics.median(times):.2f} | {percentile(times, 0.99):.2f} |")
    ddb = {k: v for k, v in made.items() if k.startswith("dynamodb:")}
    sqs = {k: v for k, v in made.items() if k.startswith("sqs:")}
    print(f"\ncontrol plane, from the launch calls to the end (events consumer included): "
          f"DynamoDB {sum(ddb.values()) / per:.1f} calls per launch "
          f"({', '.join(f'{k[9:]} {v / per:.1f}' for k, v in sorted(ddb.items()))}); "
          f"SQS {sum(sqs.values()) / per:.1f} per launch "
          f"({', '.join(f'{k[4:]} {v / per:.1f}' for k, v in sorted(sqs.items()))})")
    print("nodes over their whole run (heartbeats every second): SQS "
          + ", ".join(f"{k[4:]} {v}" for k, v in sorted(node_calls.items())))
    return 1 if over or other else 0


if __name__ == "__main__":
    sys.exit(main())
