"""The pods network and the Docker engine, as the local stack needs them before anything starts."""

from __future__ import annotations

from collections.abc import Mapping

import docker
import docker.errors

from infra.local.errors import ConfigError, DockerUnavailable
from node_daemon.errors import NodeDaemonError
from node_daemon.network import ensure_pods_network as ensure


def docker_client() -> docker.DockerClient:
    """A client for the engine at ``DOCKER_HOST`` or the default socket, or DockerUnavailable."""
    try:
        client = docker.from_env(timeout=60)
    except docker.errors.DockerException as exc:
        raise DockerUnavailable(_no_engine(exc)) from exc
    try:
        client.ping()
    except docker.errors.DockerException as exc:
        client.close()
        raise DockerUnavailable(_no_engine(exc)) from exc
    return client


def _no_engine(exc: Exception) -> str:
    return (
        f"no Docker engine answers ({exc}); `make deps` starts one on Debian as root, "
        "elsewhere start Docker"
    )


def ensure_pods_network(
    client: docker.DockerClient, name: str, labels: Mapping[str, str]
) -> str:
    """The pods bridge network exists (inter-container traffic off); returns its gateway IPv4.

    The node daemon owns this logic; the stack calls it first so that the portal and router can
    listen on the gateway before the node starts. Its errors are reported as this stack's.
    """
    try:
        return ensure(client, name, labels)
    except NodeDaemonError as exc:
        raise ConfigError(f"pods network {name} (DIT4C_NODE_PODS_NETWORK): {exc}") from exc
