"""What write-through persistence costs the local stack (``infra.local.durable``).

1. Latency per write, side by side in one run: the same DynamoDB calls (a 1 KB ``PutItem``; a
   conditional ``UpdateItem``, as a state transition is) through boto3 to three moto servers in
   this process: plain; journalling, the answer leaving once the record is written
   (``DIT4C_JOURNAL_SYNC=never``: survives a killed stack); journalling, the answer leaving once
   the record is synced to disk (``always``, the default: survives a power cut). Calls are
   alternated so the machine's load hits all three alike. Goal: at most 2 ms added at p50.
2. Throughput with 4 writers at once (their syncs are grouped), the three ways.
3. How long a compaction holds writers back (reading a state of ``--instances`` instance
   records and as many tokens), and how fast a journal is replayed at start.

The journal is written under ``build/`` (the checkout's disk, where the data directory is).
Run: ``.venv/bin/python -m bench.durable_bench [--writes N] [--instances N]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from infra.local.aws import AwsEndpoint
from infra.local.durable import DurableState, JournaledApp, replay
from infra.local.journal import Journal
from infra.local.moto_server import MotoServer
from infra.local.provision import Provisioner, Stack
from infra.local.snapshot import Snapshotter
from infra.local.template import Template

PARAMETERS = {
    "PortalUrl": "http://localhost:8000", "RouterDomain": "localhost", "RouterScheme": "http",
    "RouterTunnelUrls": "ws://127.0.0.1:8080/.dit4c/tunnel",
}
PAD = "x" * 1000
Write = Callable[[int], None]


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def put(endpoint: AwsEndpoint, table: str) -> Write:
    dynamodb = endpoint.client("dynamodb")

    def call(n: int) -> None:
        dynamodb.put_item(TableName=table, Item={"username": {"S": f"u{n}"}, "pad": {"S": PAD}})
    return call


def transition(endpoint: AwsEndpoint, table: str) -> Write:
    dynamodb = endpoint.client("dynamodb")

    def call(n: int) -> None:
        dynamodb.update_item(
            TableName=table, Key={"username": {"S": "counter"}},
            UpdateExpression="SET version = :next",
            ConditionExpression="attribute_not_exists(version) OR version = :current",
            ExpressionAttributeValues={":next": {"N": str(n + 1)}, ":current": {"N": str(n)}})
    return call


def side_by_side(calls: dict[str, Write], writes: int) -> dict[str, list[float]]:
    """Milliseconds per call, the ways alternated call by call."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for n in range(writes):
        for name, call in calls.items():
            start = time.perf_counter()
            call(n)
            times[name].append((time.perf_counter() - start) * 1000)
    return times


def throughput(call: Write, writers: int, seconds: float) -> float:
    """Writes per second with ``writers`` threads calling at once."""
    counts = [0] * writers
    stop = threading.Event()

    def run(index: int) -> None:
        n = (index + 1) * 10_000_000
        while not stop.is_set():
            call(n + counts[index])
            counts[index] += 1

    threads = [threading.Thread(target=run, args=(i,)) for i in range(writers)]
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join(30)
    return sum(counts) / seconds


def fill(endpoint: AwsEndpoint, stack: Stack, instances: int) -> None:
    dynamodb = endpoint.client("dynamodb")
    for n in range(instances):
        dynamodb.put_item(TableName=stack.environment["DIT4C_INSTANCES_TABLE"], Item={
            "instance_id": {"S": f"i{n:05d}"}, "owner": {"S": f"user{n % 50}"},
            "state": {"S": "running"}, "version": {"N": "3"}, "image": {"S": "tool:1"},
            "pad": {"S": PAD[:400]}})
        dynamodb.put_item(TableName=stack.environment["DIT4C_TOKENS_TABLE"],
                          Item={"token_key": {"S": f"t{n}"}, "pad": {"S": PAD[:200]}})


WAYS = ("plain", "written", "synced")


@dataclass
class Rig:
    """Three moto servers in this process (see the module docstring), each with the stack's
    tables under its own name."""

    endpoints: dict[str, AwsEndpoint]
    users: dict[str, str]
    stack: Stack
    app: JournaledApp
    journals: list[Journal]
    snapshotter: Snapshotter
    servers: list[MotoServer]

    @classmethod
    def start(cls, template: Template, work: Path) -> Rig:
        endpoints, users, journals, servers = {}, {}, [], []
        for way in WAYS:
            app = JournaledApp()
            server = MotoServer(wrap=None if way == "plain" else app.wrap)
            endpoint = server.start()
            stack = Provisioner(endpoint, way).provision(template, PARAMETERS)
            if way != "plain":
                snapshotter = Snapshotter(endpoint, stack, work / way,
                                          stack.environment["DIT4C_NODE_QUEUE_PREFIX"])
                journal = Journal(work / way / "journal", sync=way == "synced")
                DurableState(app, snapshotter, journal).recover()
                journals.append(journal)
            endpoints[way], users[way] = endpoint, stack.environment["DIT4C_USERS_TABLE"]
            servers.append(server)
        # The synced one is the stack's default: compaction and replay are measured on it.
        return cls(endpoints, users, stack, app, journals, snapshotter, servers)

    @property
    def journal(self) -> Journal:
        return self.journals[-1]

    def writes(self, make: Callable[[AwsEndpoint, str], Write]) -> dict[str, Write]:
        return {name: make(endpoint, self.users[name]) for name, endpoint in self.endpoints.items()}

    def stop(self) -> None:
        for journal in self.journals:
            journal.close()
        for server in self.servers:
            server.stop()


def latency(rig: Rig, writes: int) -> None:
    print(f"== latency per write, {writes} of each, alternated (ms)")
    print(f"{'call':<32} {'p50':>7} {'p90':>7} {'p99':>7} {'added p50':>10}")
    added: dict[str, list[float]] = {"written": [], "synced": []}
    side_by_side(rig.writes(put), 20)  # warm up: a client's first calls fill its caches
    for label, make in (("PutItem 1 KB", put), ("UpdateItem conditional", transition)):
        times = side_by_side(rig.writes(make), writes)
        plain = statistics.median(times["plain"])
        for name, values in times.items():
            extra = ""
            if name != "plain":
                added[name].append(statistics.median(values) - plain)
                extra = f"{added[name][-1]:+10.2f}"
            print(f"{label + ', ' + name:<32} {percentile(values, .5):7.2f} "
                  f"{percentile(values, .9):7.2f} {percentile(values, .99):7.2f} {extra}")
    for name, values in added.items():
        worst = max(values)
        print(f"added at p50, {name}: {worst:.2f} ms (goal <= 2 ms): "
              f"{'OK' if worst <= 2 else 'OVER'}")
    print(f"fdatasync of one record alone: p50 {fdatasync_p50(rig.journal):.2f} ms (the disk's "
          "share of 'synced')")


def concurrency(rig: Rig) -> None:
    print("\n== 4 writers at once, 3 s each (PutItem 1 KB, writes/s)")
    rates = {name: throughput(call, 4, 3.0) for name, call in rig.writes(put).items()}
    for name, rate in rates.items():
        print(f"{name:<12} {rate:8.0f}   ({rate / rates['plain']:.2f} of plain)")


def compaction_and_replay(rig: Rig, template: Template, instances: int, writes: int) -> None:
    print(f"\n== compaction and replay ({instances} instances, {instances} tokens)")
    durable = rig.endpoints["synced"]
    fill(durable, rig.stack, instances)
    start = time.perf_counter()
    with rig.app.held():
        segment = rig.journal.rotate()
        capture = rig.snapshotter.capture()
    held = time.perf_counter() - start
    rig.snapshotter.write(capture, segment)
    total = time.perf_counter() - start
    print(f"writers held back {held * 1000:.0f} ms; whole compaction {total * 1000:.0f} ms")
    call = put(durable, rig.users["synced"])
    for n in range(writes):
        call(n)
    records = rig.journal.read(segment).records
    rig.servers[-1].reset()
    Provisioner(durable, "synced").provision(template, PARAMETERS)
    start = time.perf_counter()
    applied = replay(rig.app.inner, records).applied
    took = time.perf_counter() - start
    print(f"replayed {applied} journalled writes ({rig.journal.size / 1024:.0f} KB) in "
          f"{took * 1000:.0f} ms: {applied / took:.0f}/s")


def fdatasync_p50(journal: Journal) -> float:
    """One record appended and synced, 200 times: the disk alone, in ms."""
    times = []
    for _ in range(200):
        start = time.perf_counter()
        journal.sync(journal.append(PAD.encode()))
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--writes", type=int, default=1000)
    parser.add_argument("--instances", type=int, default=500)
    args = parser.parse_args()
    build = Path.cwd() / "build"
    build.mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="durable-bench-", dir=build))
    template = Template.load()
    rig = Rig.start(template, work)
    try:
        latency(rig, args.writes)
        concurrency(rig)
        compaction_and_replay(rig, template, args.instances, args.writes)
    finally:
        rig.stop()
        shutil.rmtree(work, ignore_errors=True)
    print("load average: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))


if __name__ == "__main__":
    main()
