"""The helpers image a node runs: found on the engine, or pulled from the deployment's image
server with the node's own short-lived registry token, and checked against its pinned digest.

A reference pinned by digest (``<registry>/dit4c/helpers:<version>@sha256:...``, what the
portal answers at enrolment) is pulled by that digest: the engine checks the manifest against
it, and :meth:`HelpersImage.ensure` checks that the image it then holds carries it. A reference
without a digest (``dit4c/helpers:dev``, a site's own build) is only looked for on the engine:
there is nothing to check it against, and no registry to pull it from.

The result is a one-line status that the heartbeat carries to the portal
(``protocol.messages.HELPERS_OK``, or what is wrong and what to do).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import docker
import docker.errors

from node_daemon.errors import HelpersError, PortalError
from protocol.errors import RegistryError
from protocol.messages import HELPERS_OK
from protocol.registry import Reference, parse_reference

log = logging.getLogger("dit4c.node.helpers")

PULL_TIMEOUT = 600.0
"""A pull of the helpers image (about 100 MB) on a slow home uplink."""


def runnable(reference: str) -> str:
    """The name containers are made from: ``<registry>/<repository>@<digest>`` for a pinned
    reference (exactly the checked image, whatever its tag points at later), else as given."""
    try:
        ref = parse_reference(reference)
    except RegistryError:
        return reference
    if ref.digest is None:
        return reference
    return str(Reference(ref.registry, ref.repository, None, ref.digest))


class HelpersImage:
    """``reference`` on ``client``; ``registry_token(repository)`` fetches a pull token."""

    def __init__(self, client: docker.DockerClient, reference: str,
                 registry_token: Callable[[str], Awaitable[str]] | None) -> None:
        self._client = client
        self.reference = reference
        self._token = registry_token
        self.status = "not checked yet"

    def _parsed(self) -> Reference:
        try:
            return parse_reference(self.reference)
        except RegistryError as exc:
            raise HelpersError(f"helpers image {self.reference!r} is not an image reference "
                               f"({exc}): fix --helpers-image") from None

    async def ensure(self) -> str:
        """Make sure the image is here and right, pulling it if needed; the status (also
        kept in :attr:`status`). Raises :class:`HelpersError` with the same text."""
        try:
            await self._ensure()
        except HelpersError as exc:
            self.status = str(exc)
            raise
        self.status = HELPERS_OK
        return self.status

    def present(self) -> bool:
        """Whether the engine holds the image (with its pinned digest); never pulls."""
        return self._present(self._parsed())

    async def _ensure(self) -> None:
        ref = self._parsed()
        if await asyncio.to_thread(self._present, ref):
            return
        if ref.digest is None or not ref.registry:
            raise HelpersError(f"helpers image {self.reference} is missing on this engine and "
                               "names no image server to pull it from: build it (make images) "
                               "or join again to get the deployment's")
        if self._token is None:
            raise HelpersError(f"helpers image {self.reference} is missing and this node "
                               "cannot ask the portal for a pull token")
        try:
            token = await self._token(ref.repository)
        except PortalError as exc:
            raise HelpersError(f"cannot get a token to pull the helpers image: {exc}") from None
        log.info("pulling the helpers image %s", self.reference)
        try:
            await asyncio.wait_for(asyncio.to_thread(self._pull, ref, token), PULL_TIMEOUT)
        except TimeoutError:
            raise HelpersError(f"pulling the helpers image {self.reference} took longer than "
                               f"{PULL_TIMEOUT:.0f} s: check the network and retry") from None
        if not await asyncio.to_thread(self._present, ref):
            raise HelpersError(f"the helpers image pulled as {self.reference} does not carry "
                               f"the digest {ref.digest}: the image server holds another "
                               "image; ask the deployment's admin")

    def _present(self, ref: Reference) -> bool:
        try:
            image = self._client.images.get(runnable(self.reference))
        except docker.errors.ImageNotFound:
            return False
        except docker.errors.APIError as exc:
            raise HelpersError(f"the engine refused to look up the helpers image "
                               f"{self.reference}: {exc.explanation or exc}") from None
        if ref.digest is None:
            return True
        name = f"{ref.registry}/{ref.repository}" if ref.registry else ref.repository
        return f"{name}@{ref.digest}" in (image.attrs.get("RepoDigests") or [])

    def _pull(self, ref: Reference, token: str) -> None:
        name = f"{ref.registry}/{ref.repository}"
        try:
            for event in self._client.api.pull(name, tag=ref.digest, stream=True, decode=True,
                                               auth_config={"registrytoken": token}):
                if "error" in event:
                    raise HelpersError(f"pulling the helpers image {self.reference} failed: "
                                       f"{event['error']}")
        except docker.errors.APIError as exc:
            raise HelpersError(f"pulling the helpers image {self.reference} failed: "
                               f"{exc.explanation or exc}") from None
        if ref.tag:
            # Keep the version's name too: `docker images` shows what this is.
            self._client.api.tag(f"{name}@{ref.digest}", name, ref.tag)
