"""``python -m node_daemon join|run`` — the node daemon's two commands (thin: parse, call)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys
from pathlib import Path

import aiohttp
import docker
import docker.errors

from node_daemon import __version__
from node_daemon.config import IDENTITY_FILE, NodeIdentity, RunSettings, default_data_dir
from node_daemon.daemon import Daemon
from node_daemon.errors import ConfigError, NodeDaemonError
from node_daemon.portal import PortalClient
from protocol.tokens import SigningKey

log = logging.getLogger("dit4c.node")


def _memory_mb() -> int:
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1024 * 1024))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m node_daemon",
        description="dit4c node daemon: runs researchers' tool pods on this machine's Docker "
                    "engine, driven by the control plane over outbound connections only.")
    parser.add_argument("--version", action="version", version=__version__)
    commands = parser.add_subparsers(dest="command", required=True)

    join = commands.add_parser(
        "join", help="make this node's key pair and enrol it with a portal",
        description="Make the node's key pair, enrol with the portal using an admin's one-time "
                    "join token, and save the identity and private key (owner-only) in the "
                    "data directory.")
    join.add_argument("--portal", required=True, help="the portal's base URL")
    join.add_argument("--token", required=True, help="one-time join token from an admin")
    join.add_argument("--data-dir", type=Path, default=None,
                      help=f"where to keep the node's files (default {default_data_dir()})")
    join.add_argument("--name", default=socket.gethostname(), help="node name shown to admins")
    join.add_argument("--cpu", type=float, default=float(os.cpu_count() or 1),
                      help="CPU cores pods may use (default: all)")
    join.add_argument("--memory-mb", type=int, default=_memory_mb(),
                      help="memory pods may use, MB (default: all)")

    run = commands.add_parser(
        "run", help="run the agent (until SIGTERM; pods keep running)",
        description="Run the agent: fetch credentials, poll the node's queue, run pods, send "
                    "events and heartbeats. On SIGTERM it stops polling, finishes the command "
                    "in hand and exits; pods keep running. Flags override DIT4C_NODE_* "
                    "environment variables (see docs/node-daemon.md).")
    run.add_argument("--data-dir", type=Path, default=None, help="as given to join")
    run.add_argument("--pods-network", default=None,
                     help="bridge network for pods (DIT4C_NODE_PODS_NETWORK, default dit4c-pods)")
    run.add_argument("--label", action="append", default=None, metavar="K=V",
                     help="extra label on everything the daemon makes (DIT4C_NODE_LABELS)")
    run.add_argument("--helpers-image", default=None, help="DIT4C_NODE_HELPERS_IMAGE")
    run.add_argument("--metrics-listen", default=None,
                     help="host:port of the Prometheus endpoint (DIT4C_NODE_METRICS_LISTEN, "
                          "default 127.0.0.1:9464)")
    run.add_argument("--heartbeat-seconds", type=float, default=None)
    run.add_argument("--reconcile-seconds", type=float, default=None)
    run.add_argument("--report-again-seconds", type=float, default=None)
    run.add_argument("--log-level", default=os.environ.get("DIT4C_NODE_LOG_LEVEL", "INFO"))
    return parser


async def _join(args: argparse.Namespace) -> int:
    data_dir: Path = args.data_dir or default_data_dir()
    if (data_dir / IDENTITY_FILE).exists():
        print(f"join: {data_dir} already holds a node identity; use another --data-dir or "
              "remove it first", file=sys.stderr)
        return 2
    key = SigningKey.generate()
    async with aiohttp.ClientSession() as session:
        enrolment = await PortalClient(args.portal, session).enroll(
            join_token=args.token, key=key, name=args.name, cpu=args.cpu,
            memory_mb=args.memory_mb)
    NodeIdentity(node_id=enrolment.node_id, cluster_id=enrolment.cluster_id,
                 portal_url=args.portal, queue_url=enrolment.queue_url,
                 events_queue_url=enrolment.events_queue_url, name=args.name, cpu=args.cpu,
                 memory_mb=args.memory_mb).save(data_dir, key)
    print(f"joined cluster {enrolment.cluster_id} as node {enrolment.node_id}; "
          f"saved in {data_dir}")
    return 0


async def _run(args: argparse.Namespace) -> int:
    settings = RunSettings.from_sources(vars(args), os.environ)
    identity, key = NodeIdentity.load(settings.data_dir)  # fail fast, before the engine
    try:
        client = docker.from_env(timeout=120)
        client.ping()
    except docker.errors.DockerException as exc:
        print(f"run: no Docker engine answers: {exc}", file=sys.stderr)
        return 1
    try:
        daemon = Daemon(identity=identity, key=key, settings=settings, docker_client=client)
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopping.set)
        await daemon.run(stopping)
    finally:
        client.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = getattr(args, "log_level", "INFO")
    logging.basicConfig(level=level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        return asyncio.run(_join(args) if args.command == "join" else _run(args))
    except ConfigError as exc:
        print(f"{args.command}: {exc}", file=sys.stderr)
        return 2
    except NodeDaemonError as exc:
        print(f"{args.command}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
