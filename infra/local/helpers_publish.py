"""The helpers image published on the deployment's own image server, as home nodes get it.

A node that has never seen dit4c cannot build the helpers image (that takes debootstrap) and
must not pull it from a public registry: the deployment pushes it to its image server as
``<registry>/dit4c/helpers:<version>`` and the portal names it pinned by the digest the push
returned (``DIT4C_HELPERS_IMAGE``), in join commands and enrolment answers. Nodes pull it with
their own registry tokens and check that digest (``node_daemon/helpers_image.py``).

The push runs on this machine's engine with a push token the portal's keys sign (the scope of
an admin's push: ``dit4c/helpers`` is outside every user's namespace). Layers already on the
image server are not sent again, so a restart of the stack pushes next to nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import docker
import docker.errors

from control_plane.registry import HELPERS_REPOSITORY
from node_daemon import __version__
from protocol.registry import PUSH, Access

log = logging.getLogger("dit4c.local.helpers")

TokenSigner = Callable[[str, Sequence[Access]], str]
"""``(subject, access) -> registry token``: ``RegistryTokens.token``'s shape."""
PUBLISHER = "local-stack"
"""The subject of the push token."""


class PublishError(Exception):
    """The push failed; the message says why."""


def publish_helpers(client: docker.DockerClient, source: str, registry: str,
                    sign: TokenSigner) -> str:
    """Push ``source`` as ``<registry>/dit4c/helpers:<version>``; the reference pinned by the
    digest the image server answered."""
    repository = f"{registry}/{HELPERS_REPOSITORY}"
    try:
        client.images.get(source).tag(repository, __version__)
        token = sign(PUBLISHER, [Access("repository", HELPERS_REPOSITORY, PUSH)])
        digest = None
        for event in client.api.push(repository, tag=__version__, stream=True, decode=True,
                                     auth_config={"registrytoken": token}):
            if "error" in event:
                raise PublishError(f"pushing {source} to {repository} failed: {event['error']}")
            digest = (event.get("aux") or {}).get("Digest") or digest
    except docker.errors.DockerException as exc:
        raise PublishError(f"pushing {source} to {repository} failed: {exc}") from None
    if not digest:
        raise PublishError(f"the image server answered no digest for {repository}")
    reference = f"{repository}:{__version__}@{digest}"
    log.info("published the helpers image %s as %s", source, reference)
    return reference
