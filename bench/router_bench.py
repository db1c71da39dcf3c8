"""Edge router benchmark: one upstream reached five ways, in one run on this machine.

    python -m bench.router_bench [--duration 10] [--tunnels 10000] [--skip-idle]

The upstream is nginx serving static files (a 13-byte page, a 1 GiB file). It is reached
(1) directly, (2) through nginx as a reverse proxy, (3) through configurable-http-proxy (npm,
installed by this script into ``~/.cache/dit4c/chp``, never into the repository), (4) through
``python -m edge_router`` + tunnel + ``python -m helpers.listener`` (separate processes, as in
production) and (5) the path users take: (4) with the auth helper in the listener's process,
as in a pod (its gate takes every stream), and a signed-in session (the real OAuth2 server of
``tests/support/auth_harness.py`` on loopback, moto for DynamoDB). For each: small-request
rate with keep-alive (wrk), p50/p99 latency at a fixed rate (an open-loop client here), and
the throughput of a 1 GiB download (curl). Then the resident memory of a router holding
``--tunnels`` idle tunnels. Prints a Markdown table.

Per-request access logs are off for every proxy (nginx ``access_log off``, CHP's default, the
router's ``DIT4C_ROUTER_ACCESS_LOG=0``) so that the figures compare the proxying itself.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import aiohttp
from moto import mock_aws

from bench.auth_bench import sign_in, wait_for
from bench.tools import Processes, nginx_conf, wrk_rate
from protocol import pod
from protocol.tokens import SigningKey, tunnel_claims
from protocol.tunnel import HOST_HEADER, TUNNEL_PATH
from tests.ports import free_port
from tests.support.auth_harness import PortalHarness
from tests.support.auth_scenarios import PORTAL, helper_env

CHP_VERSION = "5.3.0"
CACHE = Path(os.environ.get("DIT4C_CACHE_DIR", Path.home() / ".cache" / "dit4c"))
DOMAIN = "bench.test"
INSTANCE = "bench1"
HOST = f"{INSTANCE}.{DOMAIN}"
AUTH_INSTANCE = "w"
AUTH_HOST = f"{AUTH_INSTANCE}.{DOMAIN}"
BIG = 1024 ** 3
SMALL_BODY = b"hello, bench\n"


def ensure_chp() -> Path:
    """configurable-http-proxy from npm, pinned, in the cache directory."""
    prefix = CACHE / "chp"
    binary = prefix / "node_modules" / ".bin" / "configurable-http-proxy"
    installed = prefix / "node_modules" / "configurable-http-proxy" / "package.json"
    if not (binary.exists() and json.loads(installed.read_text())["version"] == CHP_VERSION):
        prefix.mkdir(parents=True, exist_ok=True)
        subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--prefix", str(prefix),
                        f"configurable-http-proxy@{CHP_VERSION}"], check=True)
    return binary


def wait_http(port: int, host: str, path: str = "/small", limit: float = 90,
              headers: dict[str, str] | None = None) -> None:
    deadline = time.monotonic() + limit
    while True:
        try:
            request = urllib.request.Request(f"http://127.0.0.1:{port}{path}",
                                             headers={"Host": host, **(headers or {})})
            with urllib.request.urlopen(request, timeout=2) as response:  # noqa: S310
                if response.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"port {port} ({host}) did not answer {path}")
        time.sleep(0.2)


async def _fixed_rate(port: int, headers: dict[str, str], rate: int, duration: float,
                      connections: int = 32) -> list[float]:
    """Open loop: request i is due at i/rate; its latency counts from then (no coordinated
    omission). Keep-alive connections are taken from a pool."""
    lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    request = f"GET /small HTTP/1.1\r\n{lines}\r\n".encode()
    pool: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    for _ in range(connections):
        pool.put_nowait(await asyncio.open_connection("127.0.0.1", port))
    latencies: list[float] = []
    loop = asyncio.get_running_loop()

    async def one(due: float) -> None:
        reader, writer = await pool.get()
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
        await reader.readexactly(length)
        latencies.append(loop.time() - due)
        pool.put_nowait((reader, writer))

    start = loop.time() + 0.1
    tasks = []
    for i in range(int(rate * duration)):
        due = start + i / rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(due)))
    await asyncio.gather(*tasks)
    while not pool.empty():
        _, writer = pool.get_nowait()
        writer.close()
    return latencies


def latency(port: int, headers: dict[str, str], rate: int, duration: float
            ) -> tuple[float, float]:
    values = sorted(asyncio.run(_fixed_rate(port, headers, rate, duration)))
    p50 = statistics.median(values)
    p99 = values[int(len(values) * 0.99) - 1]
    return p50 * 1000, p99 * 1000


def download(port: int, headers: dict[str, str]) -> float:
    argv = ["curl", "-s", "-o", "/dev/null", "-w", "%{size_download} %{time_total}"]
    for name, value in headers.items():
        argv += ["-H", f"{name}: {value}"]
    out = subprocess.run([*argv, f"http://127.0.0.1:{port}/big"],
                         capture_output=True, text=True, check=True).stdout.split()
    size, seconds = int(out[0]), float(out[1])
    if size != BIG:
        raise RuntimeError(f"downloaded {size} bytes, not {BIG}")
    return size / seconds / 1e6


def _stat(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes and their children (nginx workers)."""
    wanted = set(pids)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                if int(_stat(int(entry.name))[1]) in pids:
                    wanted.add(int(entry.name))
    total = 0
    for pid in wanted:
        with contextlib.suppress(OSError, IndexError):
            fields = _stat(pid)
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def _open_tunnels(port: int, key: SigningKey, count: int) -> list[object]:
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    sockets: list[object] = []
    semaphore = asyncio.Semaphore(100)

    async def one(i: int) -> None:
        token = key.sign(tunnel_claims(issuer="bench", instance_id=f"idle{i}",
                                       hostname=f"idle{i}.{DOMAIN}"))
        async with semaphore:
            ws = await session.ws_connect(
                f"ws://127.0.0.1:{port}{TUNNEL_PATH}", heartbeat=None, autoping=True,
                headers={"Authorization": f"Bearer {token}", HOST_HEADER: f"idle{i}.{DOMAIN}"})
        sockets.append(ws)

    await asyncio.gather(*(one(i) for i in range(count)))
    sockets.append(session)
    return sockets


def idle_tunnels(procs: Processes, env: dict[str, str], key: SigningKey, count: int
                 ) -> tuple[float, float, float]:
    """(RSS MB before, RSS MB after, KB per tunnel) of a fresh router holding idle tunnels."""
    port, metrics = free_port(), free_port()
    router = procs.start("router-idle", [sys.executable, "-m", "edge_router"], {
        **env, "DIT4C_ROUTER_LISTEN": f"127.0.0.1:{port}",
        "DIT4C_ROUTER_METRICS_LISTEN": f"127.0.0.1:{metrics}"})
    wait_http(metrics, "x", "/metrics")
    before = rss_kb(router.pid)

    async def hold() -> int:
        sockets = await _open_tunnels(port, key, count)
        await asyncio.sleep(3)
        after = rss_kb(router.pid)
        for ws in sockets[:-1]:
            await ws.close()  # type: ignore[attr-defined]
        await sockets[-1].close()  # type: ignore[attr-defined]
        return after

    after = asyncio.run(hold())
    procs.stop(router)
    return before / 1024, after / 1024, (after - before) / count


def start_auth_path(procs: Processes, portal: PortalHarness, portal_url: str, key: SigningKey,
                    *, router_port: int, upstream_port: int) -> tuple[dict[str, str], list[int]]:
    """The path users take, as a pod runs it: one listener process with the auth helper's
    settings too (its gate serves every stream in-process) in front of the upstream; returns
    a signed-in browser's headers and the listener's pid."""
    root = str(Path(__file__).resolve().parent.parent)
    token = key.sign(tunnel_claims(issuer="bench", instance_id=AUTH_INSTANCE,
                                   hostname=AUTH_HOST))
    env = helper_env(portal, AUTH_INSTANCE, listen="127.0.0.1:0",
                     upstream=f"http://127.0.0.1:{upstream_port}", token_base=portal_url)
    listener = procs.start("listener-auth", [sys.executable, "-m", "helpers.listener"], {
        "PYTHONPATH": root, pod.ENV_TUNNEL_TOKEN: token, pod.ENV_HOSTNAME: AUTH_HOST,
        pod.ENV_ROUTER_URLS: f"ws://127.0.0.1:{router_port}{TUNNEL_PATH}", **env})
    helper_port = int(wait_for(procs.log("listener-auth"),
                               r"listening on 127\.0\.0\.1:(\d+)").group(1))
    hosts = {"portal.dit4c.test": ("127.0.0.1", int(portal_url.rsplit(":", 1)[1])),
             f"{AUTH_INSTANCE}.dit4c.test": ("127.0.0.1", helper_port)}
    cookie = asyncio.run(sign_in(hosts, AUTH_INSTANCE, "/small"))
    return {"Host": AUTH_HOST, "Cookie": f"dit4c-auth={cookie}"}, [listener.pid]


def main() -> int:  # noqa: PLR0915 - one linear script
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--rate", type=int, default=500)
    parser.add_argument("--tunnels", type=int, default=10000)
    parser.add_argument("--skip-idle", action="store_true")
    args = parser.parse_args()
    for tool in ("wrk", "nginx", "curl", "npm", "node"):
        if shutil.which(tool) is None:
            print(f"router_bench: {tool} is required (apt-get install wrk nginx curl npm)")
            return 2
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    chp = ensure_chp()
    key = SigningKey.generate()
    keep = os.environ.get("DIT4C_BENCH_KEEP")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    with tempfile.TemporaryDirectory(prefix="dit4c-bench-") as tmp, mock_aws(), \
            contextlib.ExitStack() as later:
        portal = PortalHarness(issuer=PORTAL)
        portal.access = {AUTH_INSTANCE: {"bench"}}
        work = Path(keep or tmp)
        work.mkdir(parents=True, exist_ok=True)
        work.chmod(0o755)  # nginx workers run as www-data when started by root
        root = work / "www"
        root.mkdir(exist_ok=True)
        (root / "small").write_bytes(SMALL_BODY)
        with (root / "big").open("wb") as f:
            f.truncate(BIG)
        (root / "jwks.json").write_text(json.dumps({"keys": [key.public_jwk()]}))
        procs = Processes(work)
        try:
            portal_url = later.enter_context(portal.serve("127.0.0.1"))
            ports = {name: free_port() for name in ("upstream", "nginx", "chp", "chp_api",
                                                    "router", "metrics")}
            up = ports["upstream"]
            upstream_proc = procs.start("upstream", ["nginx", "-c", str(nginx_conf(
                work, "upstream", up, f"root {root}; sendfile on; tcp_nopush on;"))])
            proxy_conf = nginx_conf(work, "proxy", ports["nginx"], (
                "location / { proxy_pass http://backend; proxy_http_version 1.1; "
                'proxy_set_header Connection ""; proxy_buffering off; }'
            ), f"upstream backend {{ server 127.0.0.1:{up}; keepalive 64; }}")
            nginx_proc = procs.start("nginx", ["nginx", "-c", str(proxy_conf)])
            chp_proc = procs.start("chp", [
                                str(chp), "--ip", "127.0.0.1", "--port", str(ports["chp"]),
                                "--api-ip", "127.0.0.1", "--api-port", str(ports["chp_api"]),
                                "--default-target", f"http://127.0.0.1:{up}",
                                "--log-level", "warn"],
                        {"CONFIGPROXY_AUTH_TOKEN": key.kid})
            router_env = {
                "DIT4C_ROUTER_DOMAIN": DOMAIN,
                "DIT4C_ROUTER_JWKS_URL": f"http://127.0.0.1:{up}/jwks.json",
                "DIT4C_ROUTER_ACCESS_LOG": "0",
                "PYTHONPATH": str(Path(__file__).resolve().parent.parent),
            }
            router_proc = procs.start("router", [sys.executable, "-m", "edge_router"], {
                **router_env, "DIT4C_ROUTER_LISTEN": f"127.0.0.1:{ports['router']}",
                "DIT4C_ROUTER_METRICS_LISTEN": f"127.0.0.1:{ports['metrics']}"})
            wait_http(ports["metrics"], "x", "/metrics")
            token = key.sign(tunnel_claims(issuer="bench", instance_id=INSTANCE, hostname=HOST))
            listener_proc = procs.start("listener", [sys.executable, "-m", "helpers.listener"], {
                "PYTHONPATH": router_env["PYTHONPATH"],
                pod.ENV_TUNNEL_TOKEN: token, pod.ENV_HOSTNAME: HOST,
                pod.ENV_ROUTER_URLS: f"ws://127.0.0.1:{ports['router']}{TUNNEL_PATH}",
                pod.ENV_UPSTREAM: f"127.0.0.1:{up}"})
            signed_in, helper_pids = start_auth_path(procs, portal, portal_url, key,
                                                     router_port=ports["router"],
                                                     upstream_port=up)
            local = {"Host": "localhost"}
            ways = [("direct (nginx static)", up, local, [upstream_proc.pid]),
                    ("nginx reverse proxy", ports["nginx"], local, [nginx_proc.pid]),
                    (f"configurable-http-proxy {CHP_VERSION}", ports["chp"], local,
                     [chp_proc.pid]),
                    ("dit4c router + tunnel + listener", ports["router"], {"Host": HOST},
                     [router_proc.pid, listener_proc.pid]),
                    ("dit4c router + tunnel + listener with auth gate (signed in)",
                     ports["router"], signed_in, [router_proc.pid, *helper_pids])]
            for name, port, headers, _ in ways:
                try:
                    wait_http(port, headers["Host"], headers=headers)
                except RuntimeError:
                    procs.report()
                    raise RuntimeError(f"{name} did not start (logs in {work})") from None
            rows = []
            for name, port, headers, pids in ways:
                print(f"measuring {name} ...", file=sys.stderr)
                before = cpu_seconds(pids)
                rate = wrk_rate(f"http://127.0.0.1:{port}/small", headers, args.duration)
                per_request = (cpu_seconds(pids) - before) / (rate * args.duration) * 1e6
                p50, p99 = latency(port, headers, args.rate, args.duration)
                before = cpu_seconds(pids)
                mbps = download(port, headers)
                per_gib = cpu_seconds(pids) - before
                rows.append((name, rate, p50, p99, mbps, per_request, per_gib))
            idle = None
            if not args.skip_idle:
                print(f"measuring {args.tunnels} idle tunnels ...", file=sys.stderr)
                idle = idle_tunnels(procs, router_env, key, args.tunnels)
        finally:
            procs.stop_all()
    chp_rate = rows[2][1]
    print(f"\nload average at the end: {os.getloadavg()[0]:.2f} "
          f"({os.cpu_count()} CPUs); wrk -t1 -c50 -d{args.duration}s; latency open loop at "
          f"{args.rate} req/s for {args.duration}s over 32 keep-alive connections\n")
    print("| path | small requests/s (keep-alive) | vs CHP | CPU µs per request | p50 ms "
          "| p99 ms | 1 GiB download MB/s | CPU s per GiB |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, rate, p50, p99, mbps, per_request, per_gib in rows:
        print(f"| {name} | {rate:,.0f} | {rate / chp_rate:.2f}x | {per_request:.0f} "
              f"| {p50:.2f} | {p99:.2f} | {mbps:,.0f} | {per_gib:.2f} |")
    print("\n(CPU: user + system time of the proxy's own processes — for the router, router and "
          "listener together; for 'direct', the nginx serving the files.)")
    if idle is not None:
        before, after, per = idle
        print(f"\n{args.tunnels} idle tunnels on one router: RSS {before:.1f} MB -> "
              f"{after:.1f} MB, {per:.1f} KB per tunnel")
    return 0


if __name__ == "__main__":
    sys.exit(main())
