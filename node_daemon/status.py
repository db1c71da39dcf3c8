"""``dit4c-node status``: what this node is, and whether each part it depends on answers.

Read-only and quick (every check bounded by a few seconds): the identity in the data directory,
the Docker engine, the portal (``GET /api/health``), the running daemon (its metrics endpoint,
whose address ``run`` writes to the data directory), the helpers image (present and carrying
its pinned digest; never pulled here) and the pods of this node on the engine.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import docker
import docker.errors

from node_daemon.config import METRICS_ADDRESS_FILE, NodeIdentity, RunSettings
from node_daemon.errors import ConfigError, HelpersError, PortalError
from node_daemon.helpers_image import HelpersImage
from node_daemon.portal import PortalClient
from protocol import pod

CHECK_TIMEOUT = aiohttp.ClientTimeout(total=5)


@dataclass
class Report:
    lines: list[str] = field(default_factory=list)
    ok: bool = True

    def add(self, what: str, text: str, *, ok: bool = True) -> None:
        self.lines.append(f"{what + ':':<10}{text}")
        self.ok = self.ok and ok


async def node_status(data_dir: Path, helpers_image: str | None) -> Report:
    report = Report()
    try:
        identity, _ = NodeIdentity.load(data_dir)
    except ConfigError as exc:
        report.add("node", f"not joined ({exc})", ok=False)
        return report
    report.add("node", f"{identity.name} ({identity.node_id}) in cluster {identity.cluster_id}, "
                       f"{identity.cpu:g} CPU, {identity.memory_mb} MB; data in {data_dir}")
    async with aiohttp.ClientSession(timeout=CHECK_TIMEOUT) as session:
        try:
            health = await PortalClient(identity.portal_url, session).health()
            report.add("portal", f"{identity.portal_url} answers (version {health.version})")
        except PortalError as exc:
            report.add("portal", f"{identity.portal_url}: {exc}", ok=False)
        await _daemon(report, data_dir, session)
    settings = RunSettings(data_dir=data_dir, helpers_image=helpers_image)
    await asyncio.to_thread(_engine, report, identity, settings.helpers_for(identity))
    return report


async def _daemon(report: Report, data_dir: Path, session: aiohttp.ClientSession) -> None:
    try:
        address = (data_dir / METRICS_ADDRESS_FILE).read_text().strip()
    except OSError:
        report.add("daemon", "not running (never started here: dit4c-node run)", ok=False)
        return
    try:
        async with session.get(f"http://{address}/metrics") as response:
            running = response.status == 200
    except (TimeoutError, aiohttp.ClientError):
        running = False
    if running:
        report.add("daemon", f"running (metrics at http://{address}/metrics)")
    else:
        report.add("daemon", "not running (start it: dit4c-node run, or the service)", ok=False)


def _engine(report: Report, identity: NodeIdentity, helpers_image: str) -> None:
    try:
        client = docker.from_env(timeout=10)
        client.ping()
    except docker.errors.DockerException as exc:
        report.add("docker", f"no engine answers ({exc})", ok=False)
        return
    try:
        report.add("docker", f"engine {client.version().get('Version', '?')} answers")
        try:
            present = HelpersImage(client, helpers_image, None).present()
        except HelpersError as exc:
            report.add("helpers", str(exc), ok=False)
        else:
            report.add("helpers", f"{helpers_image} " + (
                "present" if present else "missing (run pulls it)"), ok=present)
        pods = client.api.containers(filters={"label": f"{pod.LABEL_NODE}={identity.node_id}"})
        instances = {row["Labels"].get(pod.LABEL_INSTANCE) for row in pods}
        report.add("pods", f"{len(instances)} instance(s), {len(pods)} container(s) running")
    finally:
        client.close()
