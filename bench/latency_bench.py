"""Interactive latency, hop by hop: what a keystroke echo or a cell run costs on each path.

    python -m bench.latency_bench [--round-trips 1000] [--load-seconds 10] [--load-rate 1000]

One echo tool (``tests/support/echo_tool.py``: Nagle on and several small writes per answer, as
tornado/Jupyter do) reached four ways, all separate processes on loopback, in one run:

1. direct;
2. through the auth helper alone (``python -m helpers.auth``, signed in through the real
   OAuth2 server of ``tests/support/auth_harness.py``);
3. through the edge router + tunnel + listener (``python -m edge_router``,
   ``python -m helpers.listener``) straight to the tool;
4. the path users take: router + tunnel + a listener running the auth helper in its process,
   as in a pod (its gate serves every stream), signed in.

For each: sequential round trips of a small WebSocket message (send one, wait for the tool's
three answers) and of a small HTTP request on a keep-alive connection, p50 and p99; then the
same under load: ``--load-rate`` WebSocket messages per second spread over 100 sessions (open
loop: latency counts from when a message was due), and HTTP requests at the same rate over 32
connections. Prints a Markdown table with each path's ratio to direct.

The client acknowledges every read at once (``TCP_QUICKACK``), so that the tool's Nagle
hold-back is not charged to the client: the direct figure is the tool's own round trip, and
whatever a path adds is the path's. ``--no-client-quickack`` shows what a client that delays
its ACKs (most do, browsers included) gets directly from such a tool.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import resource
import socket
import statistics
import struct
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from moto import mock_aws

from bench.auth_bench import sign_in, wait_for
from bench.router_bench import cpu_seconds
from bench.tools import Processes
from protocol import heap, pod
from protocol.tokens import tunnel_claims
from protocol.tunnel import TUNNEL_PATH
from tests.ports import free_port
from tests.support.auth_harness import PortalHarness
from tests.support.auth_scenarios import PORTAL, helper_env
from tests.support.echo_tool import REPLIES

ROOT = Path(__file__).resolve().parent.parent
DOMAIN = "dit4c.test"
WS_KEY = b"dGhlIHNhbXBsZSBub25jZQ=="
MASK = b"\x01\x02\x03\x04"


def quick_ack(sock: socket.socket) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)


def masked_text(text: bytes) -> bytes:
    """One client (masked) text frame; up to 64 KiB."""
    size = len(text)
    head = bytes((0x81, 0x80 | size)) if size < 126 else (
        bytes((0x81, 0x80 | 126)) + struct.pack("!H", size))
    return head + MASK + bytes(b ^ MASK[i % 4] for i, b in enumerate(text))


class Client(asyncio.Protocol):
    """One keep-alive connection: ``await exchange(data, done)`` writes ``data`` and returns
    once ``done(received bytes)`` says the answer is complete (then those bytes are dropped)."""

    def __init__(self, quickack: bool) -> None:
        self.quickack = quickack
        self.transport: asyncio.Transport | None = None
        self.sock: socket.socket | None = None
        self.buf = bytearray()
        self.done: Callable[[bytearray], int] = lambda buf: 0
        self.waiter: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.sock = transport.get_extra_info("socket")

    def data_received(self, data: bytes) -> None:
        if self.quickack and self.sock is not None:
            quick_ack(self.sock)
        self.buf += data
        used = self.done(self.buf)
        if used and self.waiter is not None and not self.waiter.done():
            del self.buf[:used]
            self.waiter.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError(f"connection lost: {exc}"))

    async def exchange(self, data: bytes, done: Callable[[bytearray], int]) -> None:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.done = done
        self.transport.write(data)
        await asyncio.wait_for(self.waiter, 30)


def http_response_end(buf: bytearray) -> int:
    """Bytes of one complete response with Content-Length at the start of ``buf``, else 0."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return 0
    match = re.search(rb"(?i)\r\ncontent-length: *(\d+)", bytes(buf[:end]))
    if match is None:
        raise RuntimeError(f"no Content-Length in {bytes(buf[:end])!r}")
    total = end + 4 + int(match.group(1))
    return total if len(buf) >= total else 0


def server_frames(buf: bytearray) -> Iterator[tuple[int, int]]:
    """(payload start, end) of each complete unmasked frame at the start of ``buf``."""
    pos = 0
    while len(buf) >= pos + 2:
        size, start = buf[pos + 1] & 0x7F, pos + 2
        if size >= 126:
            start += 2 if size == 126 else 8
            if len(buf) < start:
                return
            size = int.from_bytes(buf[pos + 2:start], "big")
        pos = start + size
        if len(buf) < pos:
            return
        yield start, pos


def ws_frames_end(count: int) -> Callable[[bytearray], int]:
    """Bytes of ``count`` complete unmasked frames at the start of ``buf``, else 0."""
    def done(buf: bytearray) -> int:
        for seen, (_, end) in enumerate(server_frames(buf), 1):
            if seen == count:
                return end
        return 0
    return done


def upgrade_request(path: str, head_lines: bytes) -> bytes:
    """A WebSocket handshake for ``path`` with ``head_lines`` (Host, Cookie)."""
    return (f"GET {path} HTTP/1.1\r\n".encode() + head_lines + b"Upgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: "
            + WS_KEY + b"\r\n\r\n")


def head_end(buf: bytearray) -> int:
    """Bytes of a complete response head at the start of ``buf``, else 0."""
    return buf.find(b"\r\n\r\n") + 4 if b"\r\n\r\n" in buf else 0


@dataclass(frozen=True)
class Way:
    name: str
    port: int
    host: str
    cookie: str | None = None
    pids: tuple[int, ...] = ()
    """The processes on this way (the tool's included): their CPU under load is reported."""

    def head_lines(self) -> bytes:
        cookie = f"Cookie: dit4c-auth={self.cookie}\r\n" if self.cookie else ""
        return f"Host: {self.host}\r\n{cookie}".encode()


async def connect(way: Way, quickack: bool) -> Client:
    loop = asyncio.get_running_loop()
    _, client = await loop.create_connection(lambda: Client(quickack), "127.0.0.1", way.port)
    return client


async def open_websocket(way: Way, quickack: bool) -> Client:
    client = await connect(way, quickack)
    await client.exchange(upgrade_request("/ws", way.head_lines()), head_end)
    return client


async def sequential(way: Way, count: int, quickack: bool) -> dict[str, list[float]]:
    """Round trips one after the other: WebSocket messages, then HTTP requests."""
    results: dict[str, list[float]] = {"ws": [], "http": []}
    ws = await open_websocket(way, quickack)
    message, done = masked_text(b"1+1"), ws_frames_end(REPLIES)
    for i in range(count + 20):
        started = time.perf_counter()
        await ws.exchange(message, done)
        if i >= 20:  # warm-up
            results["ws"].append(time.perf_counter() - started)
    http = await connect(way, quickack)
    request = b"GET /small HTTP/1.1\r\n" + way.head_lines() + b"\r\n"
    for i in range(count + 20):
        started = time.perf_counter()
        await http.exchange(request, http_response_end)
        if i >= 20:
            results["http"].append(time.perf_counter() - started)
    for client in (ws, http):
        assert client.transport is not None
        client.transport.close()
    return results


async def open_loop(way: Way, rate: int, seconds: float, quickack: bool
                    ) -> dict[str, list[float]]:
    """``rate`` WebSocket messages/s over 100 sessions and ``rate`` HTTP requests/s over 32
    connections, at the same time; latency counts from when each was due."""
    sessions = [await open_websocket(way, quickack) for _ in range(100)]
    https = [await connect(way, quickack) for _ in range(32)]
    ws_pool: asyncio.Queue[Client] = asyncio.Queue()
    http_pool: asyncio.Queue[Client] = asyncio.Queue()
    for client in sessions:
        ws_pool.put_nowait(client)
    for client in https:
        http_pool.put_nowait(client)
    results: dict[str, list[float]] = {"ws": [], "http": []}
    loop = asyncio.get_running_loop()
    message, done = masked_text(b"1+1"), ws_frames_end(REPLIES)
    request = b"GET /small HTTP/1.1\r\n" + way.head_lines() + b"\r\n"

    async def one(kind: str, due: float) -> None:
        pool = ws_pool if kind == "ws" else http_pool
        client = await pool.get()
        if kind == "ws":
            await client.exchange(message, done)
        else:
            await client.exchange(request, http_response_end)
        results[kind].append(loop.time() - due)
        pool.put_nowait(client)

    start = loop.time() + 0.1
    tasks = []
    for i in range(int(rate * seconds)):
        due = start + i / rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one("ws", due)))
        tasks.append(asyncio.ensure_future(one("http", due)))
    await asyncio.gather(*tasks)
    for client in sessions + https:
        assert client.transport is not None
        client.transport.close()
    return results


def percentiles(values: list[float]) -> tuple[float, float]:
    ordered = sorted(values)
    return statistics.median(ordered) * 1000, ordered[max(0, int(len(ordered) * 0.99) - 1)] * 1000


def path_cpu(way: Way) -> float:
    """CPU seconds used so far by the way's processes and this client."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    return cpu_seconds(list(way.pids)) + own.ru_utime + own.ru_stime


def start_path(procs: Processes, portal: PortalHarness, portal_url: str
               ) -> list[Way]:
    """The tool, the auth helper alone, the router, a listener straight to the tool and one
    with the auth helper in its process (as in a pod); the four ways to the tool."""
    env = {"PYTHONPATH": str(ROOT)}
    pid = {"tool": procs.start("tool", [sys.executable, "-m", "tests.support.echo_tool",
                                        "127.0.0.1", "0"], env, ROOT).pid}
    tool_port = int(wait_for(procs.log("tool"), r"listening (\d+)").group(1))
    helper = helper_env(portal, "w", listen="127.0.0.1:0",
                        upstream=f"http://127.0.0.1:{tool_port}", token_base=portal_url)
    pid["helper"] = procs.start("helper", [sys.executable, "-m", "helpers.auth"],
                                {**env, **helper}, ROOT).pid
    helper_port = int(wait_for(procs.log("helper"),
                               r"listening on 127\.0\.0\.1:(\d+)").group(1))
    router_port = free_port()
    pid["router"] = procs.start("router", [sys.executable, "-m", "edge_router"], {
        **env, "DIT4C_ROUTER_DOMAIN": DOMAIN, "DIT4C_ROUTER_ACCESS_LOG": "0",
        "DIT4C_ROUTER_JWKS_URL": f"{portal_url}/.well-known/jwks.json",
        "DIT4C_ROUTER_LISTEN": f"127.0.0.1:{router_port}",
        # The load phase's sessions and connections all come from this one address.
        "DIT4C_ROUTER_MAX_STREAMS_PER_CLIENT": "256"}, ROOT).pid
    wait_for(procs.log("router"), r"edge router for")
    pod_helper = helper_env(portal, "p", listen="127.0.0.1:0",
                            upstream=f"http://127.0.0.1:{tool_port}", token_base=portal_url)
    listeners = {"t": {pod.ENV_UPSTREAM: f"127.0.0.1:{tool_port}"}, "p": pod_helper}
    for instance, upstream in listeners.items():
        hostname = f"{instance}.{DOMAIN}"
        token = portal.signer.sign(tunnel_claims(issuer=PORTAL, instance_id=instance,
                                                 hostname=hostname))
        pid[instance] = procs.start(f"listener-{instance}", [
            sys.executable, "-m", "helpers.listener"], {
            **env, pod.ENV_TUNNEL_TOKEN: token, pod.ENV_HOSTNAME: hostname,
            pod.ENV_ROUTER_URLS: f"ws://127.0.0.1:{router_port}{TUNNEL_PATH}", **upstream},
            ROOT).pid
        wait_for(procs.log(f"listener-{instance}"), r"tunnel to .* up")
    pod_port = int(wait_for(procs.log("listener-p"),
                            r"listening on 127\.0\.0\.1:(\d+)").group(1))
    hosts = {"portal.dit4c.test": ("127.0.0.1", int(portal_url.rsplit(":", 1)[1])),
             f"w.{DOMAIN}": ("127.0.0.1", helper_port), f"p.{DOMAIN}": ("127.0.0.1", pod_port)}
    alone, in_pod = (asyncio.run(sign_in(hosts, name, "/small")) for name in ("w", "p"))
    return [
        Way("direct to the tool", tool_port, "127.0.0.1", pids=(pid["tool"],)),
        Way("auth helper alone", helper_port, f"w.{DOMAIN}", alone,
            (pid["tool"], pid["helper"])),
        Way("router + tunnel + listener", router_port, f"t.{DOMAIN}",
            pids=(pid["tool"], pid["router"], pid["t"])),
        Way("router + tunnel + listener with the auth helper (a pod)", router_port,
            f"p.{DOMAIN}", in_pod, (pid["tool"], pid["router"], pid["p"])),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--round-trips", type=int, default=1000)
    parser.add_argument("--load-seconds", type=float, default=10)
    parser.add_argument("--load-rate", type=int, default=1000)
    parser.add_argument("--no-client-quickack", dest="quickack", action="store_false")
    args = parser.parse_args()
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    rows = []
    with tempfile.TemporaryDirectory(prefix="dit4c-latency-bench-") as tmp, mock_aws():
        procs = Processes(Path(tmp))
        portal = PortalHarness(issuer=PORTAL)
        portal.access = {"w": {"bench"}, "p": {"bench"}}
        try:
            with portal.serve("127.0.0.1") as portal_url:
                ways = start_path(procs, portal, portal_url)
                for way in ways:
                    print(f"measuring {way.name} ...", file=sys.stderr)
                    # The client's own full collections (moto and boto3 loaded: ~75,000
                    # objects, 46 ms a pass) stalled whichever way was measured 4th: not the
                    # way's time (protocol.heap; the servers freeze theirs the same way).
                    heap.freeze()
                    one_by_one = asyncio.run(sequential(way, args.round_trips, args.quickack))
                    cpu_before, wall_before = path_cpu(way), time.monotonic()
                    under_load = asyncio.run(open_loop(way, args.load_rate, args.load_seconds,
                                                       args.quickack))
                    cores = (path_cpu(way) - cpu_before) / (time.monotonic() - wall_before)
                    rows.append((way.name, {k: percentiles(v) for k, v in one_by_one.items()},
                                 {k: percentiles(v) for k, v in under_load.items()}, cores))
        except Exception:
            procs.report()
            raise
        finally:
            procs.stop_all()
    print(f"\nload average {os.getloadavg()[0]:.2f} ({os.cpu_count()} CPUs); "
          f"{args.round_trips} sequential round trips per kind; under load: "
          f"{args.load_rate} msg/s over 100 WebSockets + {args.load_rate} req/s over 32 "
          f"connections for {args.load_seconds:g} s; client quick ACK "
          f"{'on' if args.quickack else 'off'}\n")
    print("| path | WS p50 ms | WS p99 ms | WS p99 loaded ms | HTTP p50 ms | HTTP p99 ms "
          "| HTTP p99 loaded ms | CPU under load (cores, client included) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    _, direct, direct_loaded, _ = rows[0]

    def cell(value: float, base: float) -> str:
        return f"{value:.2f}" if value == base else (
            f"{value:.2f} ({value / base:.2f}x, {value - base:+.2f})")

    for name, quiet, loaded, cores in rows:
        print(f"| {name} | {cell(quiet['ws'][0], direct['ws'][0])} | {quiet['ws'][1]:.2f} "
              f"| {cell(loaded['ws'][1], direct_loaded['ws'][1])} "
              f"| {cell(quiet['http'][0], direct['http'][0])} | {quiet['http'][1]:.2f} "
              f"| {cell(loaded['http'][1], direct_loaded['http'][1])} | {cores:.2f} |")
    print("\n(p50 and loaded p99: ratio to direct and difference in ms in brackets)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
