"""Auth helper benchmark: the same work directly against the tool and through the auth helper.

    python -m bench.auth_bench [--duration 10] [--size-mb 512] [--round-trips 2000]

The tool is nginx serving a 13-byte page and a large file; the auth helper is
``python -m helpers.auth`` (a separate process, this virtualenv's aiohttp) with a signed-in
session (the real OAuth2 server of ``tests/support/auth_harness.py`` on loopback, moto for
DynamoDB). Measured, each directly and through the helper, in one run: small-request rate with
keep-alive (wrk, 2 threads, 32 connections), the throughput of one large download (curl), and
sequential WebSocket round trips (to the echo tool of ``tests/support/auth_scenarios.py``).
Prints a Markdown table with the ratio helper / direct.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from moto import mock_aws

from bench.tools import Processes, nginx_conf, wrk_rate
from tests.ports import free_port
from tests.support.auth_harness import Browser, PortalHarness
from tests.support.auth_scenarios import ECHO_TOOL, PORTAL, helper_env

ROOT = Path(__file__).resolve().parent.parent
SMALL_BODY = b"hello, bench\n"


def wait_for(log: Path, pattern: str, within: float = 30) -> re.Match[str]:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if match := re.search(pattern, log.read_text(errors="replace")):
            return match
        time.sleep(0.05)
    raise SystemExit(f"{log.name}: no {pattern!r}:\n{log.read_text(errors='replace')}")


def nginx(work: Path, procs: Processes, port: int, size: int) -> None:
    www = work / "www"
    www.mkdir()
    work.chmod(0o755)  # nginx's worker runs as nobody when we are root
    (www / "index.html").write_bytes(SMALL_BODY)
    with (www / "big").open("wb") as f:
        f.truncate(size)  # sparse: the disk is not what we measure
    procs.start("nginx", ["nginx", "-c", str(nginx_conf(work, "nginx", port, f"root {www};"))])
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def curl_mb_s(url: str, headers: dict[str, str], size: int) -> float:
    argv = ["curl", "-sS", "-o", "/dev/null", "-w", "%{size_download} %{speed_download}"]
    for name, value in headers.items():
        argv += ["-H", f"{name}: {value}"]
    got, speed = subprocess.run([*argv, url], capture_output=True, text=True,
                                check=True).stdout.split()
    if int(got) != size:
        raise SystemExit(f"curl got {got} of {size} bytes from {url}")
    return float(speed) / 1e6


async def ws_round_trips(url: str, headers: dict[str, str], count: int) -> float:
    async with aiohttp.ClientSession() as http, http.ws_connect(url, headers=headers) as ws:
        await ws.receive(timeout=10)  # the echo tool's hello
        started = time.perf_counter()
        for i in range(count):
            await ws.send_str(str(i))
            reply = await ws.receive(timeout=10)
            if reply.data != f"echo: {i}":
                raise SystemExit(f"bad echo {reply.data!r}")
        return count / (time.perf_counter() - started)


async def sign_in(hosts: dict[str, tuple[str, int]], instance: str,
                  path: str = "/index.html") -> str:
    """The session cookie of user ``bench`` after signing in to ``instance`` at ``path``."""
    browser = Browser(hosts, "bench")
    try:
        visit = await browser.get(f"http://{instance}.dit4c.test{path}")
        if visit.status != 200:
            raise SystemExit(f"sign-in failed: {visit}")
        return next(c.value for c in browser.jar if c.key == "dit4c-auth")
    finally:
        await browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--size-mb", type=int, default=512)
    parser.add_argument("--round-trips", type=int, default=2000)
    args = parser.parse_args()
    size = args.size_mb * 1024 * 1024
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    with tempfile.TemporaryDirectory(prefix="dit4c-auth-bench-") as tmp, mock_aws():
        work = Path(tmp)
        procs = Processes(work)
        portal = PortalHarness(issuer=PORTAL)
        portal.access = {"n": {"bench"}, "w": {"bench"}}
        try:
            with portal.serve("127.0.0.1") as portal_url:
                hosts = {"portal.dit4c.test": ("127.0.0.1", int(portal_url.rsplit(":", 1)[1]))}
                nginx_port = free_port()
                nginx(work, procs, nginx_port, size)
                procs.start("echo", [sys.executable, "-c", ECHO_TOOL, "127.0.0.1", "0"])
                echo_port = int(wait_for(procs.log("echo"), r"listening (\d+)").group(1))
                upstreams = {"n": nginx_port, "w": echo_port}
                helper_ports = {}
                for instance, port in upstreams.items():
                    env = helper_env(portal, instance, listen="127.0.0.1:0",
                                     upstream=f"http://127.0.0.1:{port}", token_base=portal_url)
                    procs.start(f"helper-{instance}", [sys.executable, "-m", "helpers.auth"],
                                {"PYTHONPATH": str(ROOT), **env}, cwd=ROOT)
                    helper_ports[instance] = int(wait_for(
                        procs.log(f"helper-{instance}"),
                        r"listening on 127\.0\.0\.1:(\d+)").group(1))
                    hosts[f"{instance}.dit4c.test"] = ("127.0.0.1", helper_ports[instance])
                cookies = {i: asyncio.run(sign_in(hosts, i)) for i in upstreams}
                rows = measure(args, size, nginx_port=nginx_port, echo_port=echo_port,
                               helper_ports=helper_ports, cookies=cookies)
        finally:
            procs.stop_all()
    print(f"\nAuth helper benchmark ({os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}; "
          "helper on this virtualenv's aiohttp)\n")
    print("| what | direct | through the auth helper | helper / direct |")
    print("| --- | --- | --- | --- |")
    for what, direct, helper, unit in rows:
        print(f"| {what} | {direct:,.0f} {unit} | {helper:,.0f} {unit} | {helper / direct:.2f} |")


def measure(args: argparse.Namespace, size: int, *, nginx_port: int, echo_port: int,
            helper_ports: dict[str, int], cookies: dict[str, str]
            ) -> list[tuple[str, float, float, str]]:
    host_n = {"Host": "n.dit4c.test"}
    through_n = {**host_n, "Cookie": f"dit4c-auth={cookies['n']}"}
    direct_url, helper_url = (f"http://127.0.0.1:{nginx_port}",
                              f"http://127.0.0.1:{helper_ports['n']}")
    rows = [
        ("13-byte page, keep-alive (wrk -t2 -c32)",
         wrk_rate(direct_url + "/index.html", host_n, args.duration, threads=2, connections=32),
         wrk_rate(helper_url + "/index.html", through_n, args.duration, threads=2,
                  connections=32), "req/s"),
        (f"{args.size_mb} MiB download (curl)",
         curl_mb_s(direct_url + "/big", host_n, size),
         curl_mb_s(helper_url + "/big", through_n, size), "MB/s"),
    ]
    through_w = {"Host": "w.dit4c.test", "Cookie": f"dit4c-auth={cookies['w']}"}
    rows.append((
        f"WebSocket round trips, sequential ({args.round_trips})",
        asyncio.run(ws_round_trips(f"http://127.0.0.1:{echo_port}/ws", {}, args.round_trips)),
        asyncio.run(ws_round_trips(f"http://127.0.0.1:{helper_ports['w']}/ws", through_w,
                                   args.round_trips)),
        "msg/s"))
    return rows


if __name__ == "__main__":
    main()
