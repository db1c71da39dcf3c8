"""The pods network and the Docker engine, as the local stack needs them before anything starts."""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Mapping

import docker
import docker.errors

from infra.local.errors import DockerUnavailable

ICC_OPTION = "com.docker.network.bridge.enable_icc"


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

    The node daemon owns this logic (``node_daemon.network.ensure_pods_network``); the stack
    calls it so that the portal and router can listen on the gateway before the node starts.
    """
    if importlib.util.find_spec("node_daemon.network") is not None:
        node_network = importlib.import_module("node_daemon.network")
        return str(node_network.ensure_pods_network(client, name, labels))
    return _ensure_until_node_daemon_lands(client, name, labels)


def _ensure_until_node_daemon_lands(
    client: docker.DockerClient, name: str, labels: Mapping[str, str]
) -> str:
    # Temporary: the node daemon's own function replaces this as soon as it is on main.
    existing = [n for n in client.networks.list(names=[name]) if n.name == name]
    if existing:
        network = existing[0]
        network.reload()
    else:
        network = client.networks.create(
            name, driver="bridge", options={ICC_OPTION: "false"}, labels=dict(labels),
            check_duplicate=True,
        )
        network.reload()
    for config in network.attrs.get("IPAM", {}).get("Config") or []:
        gateway = config.get("Gateway")
        if gateway and ":" not in gateway:
            return str(gateway)
    raise DockerUnavailable(f"network {name} has no IPv4 gateway")
