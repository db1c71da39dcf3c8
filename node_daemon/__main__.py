"""``dit4c-node join|run|status`` (also ``python -m node_daemon ...``): the node daemon's
commands (thin: parse, call)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys
from pathlib import Path

import docker
import docker.errors

from node_daemon import __version__
from node_daemon.config import NodeIdentity, RunSettings, default_data_dir
from node_daemon.daemon import Daemon
from node_daemon.errors import ConfigError, NodeDaemonError
from node_daemon.joining import JoinError, JoinRequest, join
from node_daemon.status import node_status

log = logging.getLogger("dit4c.node")


def _memory_mb() -> int:
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1024 * 1024))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dit4c-node",
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
    join.add_argument("--helpers-digest", default=None, metavar="sha256:...",
                      help="the helpers image's digest the portal must publish (the join "
                           "command the portal shows pins it)")

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

    status = commands.add_parser(
        "status", help="say what this node is and whether its parts answer",
        description="Print the node's identity, whether the Docker engine, the portal and the "
                    "running daemon answer, the helpers image and the pods; exit 0 when all "
                    "is well, 1 otherwise.")
    status.add_argument("--data-dir", type=Path, default=None, help="as given to join")
    status.add_argument("--helpers-image", default=None, help="DIT4C_NODE_HELPERS_IMAGE")
    return parser


async def _join(args: argparse.Namespace) -> int:
    data_dir: Path = args.data_dir or default_data_dir()
    try:
        joined = await join(JoinRequest(
            portal=args.portal.rstrip("/"), token=args.token, data_dir=data_dir,
            name=args.name, cpu=args.cpu, memory_mb=args.memory_mb,
            helpers_digest=args.helpers_digest))
    except JoinError as exc:
        print(f"join: {exc}", file=sys.stderr)
        return exc.status
    identity = joined.identity
    helpers = f"; helpers image {joined.helpers} pulled and checked" if joined.helpers else ""
    print(f"joined cluster {identity.cluster_id} as node {identity.node_id}{helpers}; "
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


async def _status(args: argparse.Namespace) -> int:
    report = await node_status(args.data_dir or default_data_dir(), args.helpers_image)
    for line in report.lines:
        print(line)
    return 0 if report.ok else 1


COMMANDS = {"join": _join, "run": _run, "status": _status}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = getattr(args, "log_level", "INFO")
    logging.basicConfig(level=level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        return asyncio.run(COMMANDS[args.command](args))
    except ConfigError as exc:
        print(f"{args.command}: {exc}", file=sys.stderr)
        return 2
    except NodeDaemonError as exc:
        print(f"{args.command}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
