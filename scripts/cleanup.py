"""Remove the Docker objects that test runs left behind, found by their labels.

Everything a test creates carries ``dit4c.test-run=<run id>`` (see tests/conftest.py).
``python -m scripts.cleanup --run ID`` removes one run's containers, networks, volumes and
images; ``--stale MINUTES`` removes those of any run that are older than that (leftovers of a
killed run), so concurrent runs of other people on a shared engine are left alone.
Removing what is already gone is success. Either way, the node daemon's egress chains of pods
bridges that no longer exist are removed too.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import errno
import logging
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import docker
import docker.errors

log = logging.getLogger("dit4c.scripts.cleanup")

TEST_RUN_LABEL = "dit4c.test-run"


@dataclass
class Removed:
    """Names of what :func:`remove_labelled` removed, per kind."""

    containers: list[str] = field(default_factory=list)
    networks: list[str] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)
    images: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        parts = [f"{len(v)} {k}" for k, v in vars(self).items() if v]
        return ", ".join(parts) or "nothing"


def _created(attrs: dict[str, Any]) -> datetime | None:
    raw = attrs.get("Created") or attrs.get("CreatedAt")
    if isinstance(raw, int | float):
        return datetime.fromtimestamp(raw, UTC)
    if isinstance(raw, str) and raw:
        # Docker prints nanoseconds; fromisoformat takes at most microseconds.
        head, _, rest = raw.partition(".")
        zone = rest.lstrip("0123456789") if rest else raw[19:]
        try:
            return datetime.fromisoformat(head[:19] + (zone.replace("Z", "+00:00") or "+00:00"))
        except ValueError:
            return None
    return None


def _gone_ok(remove: Callable[[], object], what: str) -> bool:
    try:
        remove()
    except docker.errors.NotFound:
        return False
    except docker.errors.APIError as exc:
        # 409: removal already in progress, or still in use by something of another run.
        log.warning("could not remove %s: %s", what, exc.explanation or exc)
        return False
    return True


def remove_labelled(
    client: docker.DockerClient, label: str, older_than: timedelta | None = None
) -> Removed:
    """Remove containers, networks, volumes and images matching the label filter ``label``.

    ``label`` is ``key`` or ``key=value``. With ``older_than``, only containers and networks
    created longer ago than that (volumes and images follow their run's containers).
    """
    now = datetime.now(UTC)
    removed = Removed()
    filters = {"label": label}

    def old_enough(attrs: dict[str, Any]) -> bool:
        if older_than is None:
            return True
        created = _created(attrs)
        return created is not None and now - created > older_than

    for container in client.containers.list(all=True, filters=filters):
        if old_enough(container.attrs) and _gone_ok(
            partial(container.remove, force=True, v=True), f"container {container.name}"
        ):
            removed.containers.append(container.name)
    for network in client.networks.list(filters=filters):
        if old_enough(network.attrs) and _gone_ok(network.remove, f"network {network.name}"):
            removed.networks.append(network.name)
    if older_than is None:
        for volume in client.volumes.list(filters=filters):
            # A storage helper killed with its pod leaves its (dead) FUSE mount inside its
            # volume, and the engine cannot remove a volume with a mount in it.
            _detach_mounts_under(str(volume.attrs.get("Mountpoint") or ""))
            if _gone_ok(partial(volume.remove, force=True), f"volume {volume.name}"):
                removed.volumes.append(volume.name)
        for image in client.images.list(filters=filters):
            name = image.tags[0] if image.tags else image.short_id
            if _gone_ok(partial(client.images.remove, image.id, force=True), f"image {name}"):
                removed.images.append(name)
    return removed


EGRESS_CHAIN = re.compile(r"^-N (DIT4C-(?:FWD|IN)-(\S+))$")
"""The node daemon's egress chains (node_daemon/egress.py), one pair per pods bridge."""


def remove_orphan_egress_chains(iptables: str | None = None) -> list[str]:
    """Remove the egress chains (and their jumps) of pods bridges that no longer exist: they
    match nothing, but every test run's pods network would leave two behind."""
    binary = iptables or shutil.which("iptables")
    if binary is None:
        return []

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([binary, "-w", "5", *args], capture_output=True,
                              text=True, timeout=30, check=False)

    listing = run("-S").stdout.splitlines()
    removed = []
    for line in listing:
        match = EGRESS_CHAIN.match(line)
        if match is None or Path("/sys/class/net", match.group(2)).exists():
            continue
        chain, bridge = match.groups()
        for parent in ("DOCKER-USER", "INPUT"):
            run("-D", parent, "-i", bridge, "-j", chain)
        run("-F", chain)
        if run("-X", chain).returncode == 0:
            removed.append(chain)
    return removed


def _detach_mounts_under(folder: str, mountinfo: str = "/proc/self/mountinfo") -> None:
    """Lazily unmount whatever is mounted below ``folder`` (this host's mounts; root only)."""
    if not folder or not os.path.exists(mountinfo):
        return
    with open(mountinfo) as table:
        points = [line.split()[4] for line in table if len(line.split()) > 4]
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    for point in sorted(set(points), key=len, reverse=True):
        if point.startswith(folder.rstrip("/") + "/"):
            while libc.umount2(point.encode(), 2) == 0:  # MNT_DETACH; mounts may be stacked
                log.info("detached %s", point)
            if ctypes.get_errno() not in (errno.EINVAL, errno.ENOENT):
                log.warning("could not detach %s: %s", point, os.strerror(ctypes.get_errno()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--run", help="remove everything labelled with this test-run id")
    group.add_argument("--stale", type=float, metavar="MINUTES",
                       help="remove any test run's containers/networks older than this")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="cleanup: %(message)s")
    try:
        client = docker.from_env()
        if args.run:
            removed = remove_labelled(client, f"{TEST_RUN_LABEL}={args.run}")
        else:
            removed = remove_labelled(client, TEST_RUN_LABEL, timedelta(minutes=args.stale))
    except docker.errors.DockerException as exc:
        print(f"cleanup: {exc}", file=sys.stderr)
        return 1
    chains = remove_orphan_egress_chains()
    print(f"cleanup: removed {removed}" + (f", {len(chains)} egress chains" if chains else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
