"""The pods network: one bridge that every pod joins, with inter-container traffic disabled.

With ``enable_icc=false`` a pod reaches the outside world (edge routers, the portal, the host
through the bridge's gateway as ``host.docker.internal``) but not another pod's address.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import docker
import docker.errors

from node_daemon.egress import bridge_of
from node_daemon.errors import ConfigError, PodError
from protocol.pod import PODS_NETWORK

log = logging.getLogger("dit4c.node.network")

ICC_OPTION = "com.docker.network.bridge.enable_icc"


def ensure_pods_network(client: docker.DockerClient, name: str = PODS_NETWORK,
                        labels: Mapping[str, str] | None = None) -> str:
    """Make sure the bridge network ``name`` exists with ICC disabled; return its gateway IP.

    Idempotent and safe against a concurrent creator. An existing network of that name that
    lets containers reach each other is refused (ConfigError): pods on it would not be isolated.
    """
    network = _find(client, name)
    if network is None:
        try:
            client.networks.create(name, driver="bridge", options={ICC_OPTION: "false"},
                                   labels=dict(labels or {}), check_duplicate=True)
            log.info("created pods network %s", name)
        except docker.errors.APIError as exc:
            if exc.status_code != 409:
                raise PodError(f"cannot create network {name}: {exc.explanation or exc}") \
                    from exc
        network = _find(client, name)
        if network is None:
            raise PodError(f"network {name} vanished right after it was created")
    attrs = network.attrs
    if attrs.get("Driver") != "bridge" or attrs.get("Options", {}).get(ICC_OPTION) != "false":
        raise ConfigError(
            f"network {name} exists but is not a bridge with {ICC_OPTION}=false: pods on it "
            "could reach each other; remove it or choose another --pods-network")
    for config in attrs.get("IPAM", {}).get("Config") or []:
        gateway = config.get("Gateway")
        if gateway and ":" not in gateway:
            return str(gateway)
    raise PodError(f"network {name} has no IPv4 gateway")


def _find(client: docker.DockerClient, name: str) -> docker.models.networks.Network | None:
    # networks.list(names=...) matches substrings; insist on the exact name.
    for network in client.networks.list(names=[name]):
        if network.name == name:
            network.reload()
            return network
    return None


def pods_bridge(client: docker.DockerClient, name: str = PODS_NETWORK) -> str:
    """The Linux bridge of the pods network (where its egress policy applies)."""
    network = _find(client, name)
    if network is None:
        raise PodError(f"network {name} does not exist")
    return bridge_of(network.attrs)
