"""``dit4c-node join``: enrol this machine with a portal, all or nothing.

Everything that can be checked before the join token is spent is checked first, each failure
one line saying what to do, and nothing is written or enrolled:

1. the data directory holds no identity yet;
2. a Docker engine answers (``DOCKER_HOST`` or the default socket);
3. the portal answers ``GET /api/health`` as a dit4c portal (a wrong URL and a portal that is
   down are told apart from a refused token);
4. the helpers digest pinned in the command (``--helpers-digest``) is the one the portal
   publishes (a command copied from another deployment, or from before an upgrade).

Then the token is spent (enrolment), the identity saved, and the helpers image pulled with the
node's own registry token and checked against its digest. If anything after the enrolment
fails, the node withdraws (``DELETE /api/nodes/{id}``, signed by its key) and its files are
removed: no half-joined node is left in the portal or on disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import docker
import docker.errors

from node_daemon.config import IDENTITY_FILE, KEY_FILE, NodeIdentity
from node_daemon.errors import HelpersError, NodeDaemonError, PortalError
from node_daemon.helpers_image import HelpersImage
from node_daemon.portal import PortalClient
from protocol.registry import parse_reference
from protocol.tokens import SigningKey

log = logging.getLogger("dit4c.node.join")

COPY_AGAIN = "copy the join command again from the portal (Nodes page)"


class JoinError(NodeDaemonError):
    """Joining failed; the message is the one line the user reads. ``status``: the exit code
    (1 something outside failed, 2 bad input)."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class JoinRequest:
    portal: str
    token: str
    data_dir: Path
    name: str
    cpu: float
    memory_mb: int
    helpers_digest: str | None = None


@dataclass(frozen=True)
class Joined:
    identity: NodeIdentity
    helpers: str | None
    """The helpers image pulled and checked, if the portal publishes one."""


def check_engine() -> docker.DockerClient:
    where = os.environ.get("DOCKER_HOST") or "the default socket (/var/run/docker.sock)"
    try:
        client = docker.from_env(timeout=30)
        client.ping()
    except docker.errors.DockerException as exc:
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise JoinError(f"no Docker engine answers at {where} ({reason}): start Docker, or "
                        "set DOCKER_HOST, or add this user to the docker group; then run the "
                        "same command again") from None
    return client


async def join(request: JoinRequest) -> Joined:
    if (request.data_dir / IDENTITY_FILE).exists():
        raise JoinError(f"{request.data_dir} already holds a node identity; use another "
                        "--data-dir or remove it first", status=2)
    client = await asyncio.to_thread(check_engine)
    try:
        async with aiohttp.ClientSession() as session:
            portal = PortalClient(request.portal, session)
            helpers = await _check_portal(portal, request)
            key = SigningKey.generate()
            try:
                enrolment = await portal.enroll(
                    join_token=request.token, key=key, name=request.name, cpu=request.cpu,
                    memory_mb=request.memory_mb)
            except PortalError as exc:
                raise JoinError(_enrolment_refused(exc, request.portal)) from None
            identity = NodeIdentity(
                node_id=enrolment.node_id, cluster_id=enrolment.cluster_id,
                portal_url=request.portal, queue_url=enrolment.queue_url,
                events_queue_url=enrolment.events_queue_url, name=request.name,
                cpu=request.cpu, memory_mb=request.memory_mb,
                helpers_image=enrolment.helpers_image or helpers)
            try:
                identity.save(request.data_dir, key)
                if identity.helpers_image:
                    await HelpersImage(
                        client, identity.helpers_image,
                        lambda repository: portal.registry_token(identity.node_id, key,
                                                                 repository)).ensure()
            except (HelpersError, OSError) as exc:
                await _undo(portal, identity, key, request.data_dir)
                raise JoinError(f"{exc}; the node was withdrawn from the portal, so make a "
                                "new join token and run its command once this is fixed") \
                    from None
            return Joined(identity, identity.helpers_image)
    finally:
        client.close()


async def _check_portal(portal: PortalClient, request: JoinRequest) -> str | None:
    """The portal's helpers image, after checking it is a dit4c portal that answers and that
    the command's pinned digest is its."""
    try:
        health = await portal.health()
    except PortalError as exc:
        if exc.status is None:
            raise JoinError(f"cannot reach the portal at {request.portal}: check the URL "
                            f"({COPY_AGAIN}) and this machine's network, or try again when the "
                            "portal is up") from None
        raise JoinError(f"{request.portal} is not a dit4c portal (GET /api/health: "
                        f"{exc.status}): check --portal ({COPY_AGAIN})") from None
    if request.helpers_digest is None:
        return health.helpers_image
    published = parse_reference(health.helpers_image).digest if health.helpers_image else None
    if published != request.helpers_digest:
        raise JoinError(f"this command pins the helpers image {request.helpers_digest}, but the "
                        f"portal publishes {published or 'none'}: {COPY_AGAIN}")
    return health.helpers_image


def _enrolment_refused(exc: PortalError, portal: str) -> str:
    if exc.status is None:
        return (f"the portal at {portal} stopped answering during the join ({exc}); nothing "
                "was joined: run the same command again")
    if exc.status == 401:
        detail = str(exc).split("): ", 1)[-1]
        return f"the portal refused the join token: {detail}"
    return f"the portal refused to enrol this node: {exc}"


async def _undo(portal: PortalClient, identity: NodeIdentity, key: SigningKey,
                data_dir: Path) -> None:
    try:
        await portal.withdraw(identity.node_id, key)
    except PortalError as exc:
        log.error("could not withdraw node %s (an admin can decommission it): %s",
                  identity.node_id, exc)
    for name in (IDENTITY_FILE, KEY_FILE):  # only what join wrote: the folder may be shared
        with contextlib.suppress(OSError):
            (data_dir / name).unlink()
