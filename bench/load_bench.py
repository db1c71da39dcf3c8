"""Load on one router: many open WebSockets to one instance, each with a message a second.

    python -m bench.load_bench [--sessions 1000] [--seconds 60]

The path users take, as separate processes on loopback: ``python -m edge_router`` and a
listener running the auth helper in its process (as in a pod), in front of the echo tool of
``tests/support/echo_tool.py``; ``--sessions`` signed-in WebSockets are opened through the
router to that one instance, then each sends one small message a second (staggered over the
second) for ``--seconds`` and waits for the tool's answers. Reports errors (a failed open, a
lost connection, an answer missing after 10 s), the round trip's p50/p99/max, and the router's
memory and CPU (and the listener's, which carries the same sessions).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import sys
import tempfile
from pathlib import Path

from moto import mock_aws

from bench.auth_bench import sign_in, wait_for
from bench.latency_bench import (
    ROOT,
    Client,
    Way,
    masked_text,
    open_websocket,
    ws_frames_end,
)
from bench.router_bench import cpu_seconds, rss_kb
from bench.tools import Processes
from protocol import heap, pod
from protocol.tokens import tunnel_claims
from protocol.tunnel import TUNNEL_PATH
from tests.ports import free_port
from tests.support.auth_harness import PortalHarness
from tests.support.auth_scenarios import PORTAL, helper_env
from tests.support.echo_tool import REPLIES

DOMAIN = "dit4c.test"
ANSWER_TIMEOUT = 10.0


async def load(way: Way, sessions: int, seconds: float, pids: dict[str, int]
               ) -> dict[str, object]:
    opened: list[Client] = []
    errors: list[str] = []
    semaphore = asyncio.Semaphore(50)

    async def open_one() -> None:
        async with semaphore:
            try:
                opened.append(await open_websocket(way, quickack=True))
            except Exception as exc:  # every failure is counted, none stops the run
                errors.append(f"open: {exc!r}")

    rss_before = {name: rss_kb(pid) for name, pid in pids.items()}
    await asyncio.gather(*(open_one() for _ in range(sessions)))
    round_trips: list[float] = []
    message, done = masked_text(b"1+1"), ws_frames_end(REPLIES)
    loop = asyncio.get_running_loop()
    cpu_before = {name: cpu_seconds([pid]) for name, pid in pids.items()}
    started = loop.time()
    peak = dict(rss_before)

    async def session(index: int, client: Client) -> None:
        await asyncio.sleep(index / max(1, len(opened)))  # spread over the first second
        for tick in range(int(seconds)):
            due = started + index / len(opened) + tick
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            sent = loop.time()
            try:
                await asyncio.wait_for(client.exchange(message, done), ANSWER_TIMEOUT)
            except Exception as exc:
                errors.append(f"message: {exc!r}")
                return
            round_trips.append(loop.time() - sent)

    async def watch() -> None:
        while True:
            await asyncio.sleep(1)
            for name, pid in pids.items():
                peak[name] = max(peak[name], rss_kb(pid))

    watcher = asyncio.ensure_future(watch())
    await asyncio.gather(*(session(i, c) for i, c in enumerate(opened)))
    wall = loop.time() - started
    watcher.cancel()
    cpu = {name: (cpu_seconds([pid]) - cpu_before[name]) / wall for name, pid in pids.items()}
    rss_after = {name: rss_kb(pid) for name, pid in pids.items()}
    for client in opened:
        if client.transport is not None:
            client.transport.close()
    ordered = sorted(round_trips)
    return {
        "opened": len(opened), "messages": len(round_trips), "errors": errors,
        "p50": statistics.median(ordered) * 1000 if ordered else float("nan"),
        "p99": ordered[max(0, int(len(ordered) * 0.99) - 1)] * 1000 if ordered else float("nan"),
        "max": ordered[-1] * 1000 if ordered else float("nan"),
        "wall": wall, "cpu": cpu, "rss_before": rss_before, "rss_peak": peak,
        "rss_after": rss_after,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--seconds", type=int, default=60)
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # children inherit it
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    env = {"PYTHONPATH": str(ROOT)}
    with tempfile.TemporaryDirectory(prefix="dit4c-load-bench-") as tmp, mock_aws():
        procs = Processes(Path(tmp))
        portal = PortalHarness(issuer=PORTAL)
        portal.access = {"p": {"bench"}}
        try:
            with portal.serve("127.0.0.1") as portal_url:
                tool = procs.start("tool", [sys.executable, "-m", "tests.support.echo_tool",
                                            "127.0.0.1", "0"], env, ROOT)
                tool_port = int(wait_for(procs.log("tool"), r"listening (\d+)").group(1))
                router_port = free_port()
                router = procs.start("router", [sys.executable, "-m", "edge_router"], {
                    **env, "DIT4C_ROUTER_DOMAIN": DOMAIN, "DIT4C_ROUTER_ACCESS_LOG": "0",
                    "DIT4C_ROUTER_JWKS_URL": f"{portal_url}/.well-known/jwks.json",
                    "DIT4C_ROUTER_LISTEN": f"127.0.0.1:{router_port}",
                    "DIT4C_ROUTER_MAX_STREAMS": str(args.sessions + 10),
                    # Every session comes from this one address.
                    "DIT4C_ROUTER_MAX_STREAMS_PER_CLIENT": str(args.sessions + 10),
                    "DIT4C_ROUTER_MAX_CONNECTIONS_PER_CLIENT": str(args.sessions + 10)}, ROOT)
                wait_for(procs.log("router"), r"edge router for")
                hostname = f"p.{DOMAIN}"
                listener = procs.start("listener", [sys.executable, "-m", "helpers.listener"], {
                    **env, pod.ENV_TUNNEL_TOKEN: portal.signer.sign(tunnel_claims(
                        issuer=PORTAL, instance_id="p", hostname=hostname)),
                    pod.ENV_HOSTNAME: hostname,
                    pod.ENV_ROUTER_URLS: f"ws://127.0.0.1:{router_port}{TUNNEL_PATH}",
                    **helper_env(portal, "p", listen="127.0.0.1:0",
                                 upstream=f"http://127.0.0.1:{tool_port}",
                                 token_base=portal_url)}, ROOT)
                wait_for(procs.log("listener"), r"tunnel to .* up")
                helper_port = int(wait_for(procs.log("listener"),
                                           r"listening on 127\.0\.0\.1:(\d+)").group(1))
                hosts = {"portal.dit4c.test": ("127.0.0.1", int(portal_url.rsplit(":", 1)[1])),
                         f"p.{DOMAIN}": ("127.0.0.1", helper_port)}
                cookie = asyncio.run(sign_in(hosts, "p", "/small"))
                pids = {"router": router.pid, "listener": listener.pid, "tool": tool.pid,
                        "client": os.getpid()}
                results = {}
                for way in (Way("direct to the tool", tool_port, "127.0.0.1"),
                            Way("router + tunnel + listener with the auth helper", router_port,
                                hostname, cookie)):
                    print(f"{way.name}: opening {args.sessions} WebSockets ...",
                          file=sys.stderr)
                    heap.freeze()  # the client's collections are not the path's (latency_bench)
                    results[way.name] = asyncio.run(load(way, args.sessions, args.seconds,
                                                         pids))
        except Exception:
            procs.report()
            raise
        finally:
            procs.stop_all()
    print(f"\n{args.sessions} WebSockets to one instance, one message a second each for "
          f"{args.seconds} s (the tool answers each with {REPLIES}); {os.cpu_count()} CPUs, "
          f"load average at the end {os.getloadavg()[0]:.2f}\n")
    print("| path | opened | messages answered | errors | p50 ms | p99 ms | max ms "
          "| router CPU | router RSS MB (before / peak) | listener CPU | listener RSS MB "
          "| tool CPU | client CPU |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
          "| ---: |")
    errors: list[str] = []
    for name, result in results.items():
        cpu, before, peak = result["cpu"], result["rss_before"], result["rss_peak"]
        found = result["errors"]
        assert isinstance(cpu, dict) and isinstance(before, dict) and isinstance(peak, dict)
        assert isinstance(found, list)
        errors += found
        print(f"| {name} | {result['opened']} | {result['messages']} | {len(found)} "
              f"| {result['p50']:.2f} | {result['p99']:.2f} | {result['max']:.2f} "
              f"| {cpu['router'] * 100:.0f} % | {before['router'] / 1024:.1f} / "
              f"{peak['router'] / 1024:.1f} | {cpu['listener'] * 100:.0f} % "
              f"| {before['listener'] / 1024:.1f} / {peak['listener'] / 1024:.1f} "
              f"| {cpu['tool'] * 100:.0f} % | {cpu['client'] * 100:.0f} % |")
    for error in errors[:10]:
        print(f"error: {error}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
