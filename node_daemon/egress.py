"""What pods may reach besides the internet: the egress policy of the pods network.

A tool is someone else's code on this node's network. Without a policy it reaches the cloud
metadata address (169.254.169.254: the machine's credentials on a cloud VM), every port of the
host through the bridge's gateway, and the node's LAN. The policy, per pods bridge:

- **link-local** (169.254.0.0/16, metadata included): dropped;
- **the LAN** (RFC 1918, 100.64.0.0/10 shared address space): refused, except the CIDRs the node
  allows (``DIT4C_NODE_POD_LAN``: e.g. a lab's file server; ``open`` for all);
- **the host itself**: only the TCP ports the node allows (``DIT4C_NODE_POD_HOST_PORTS``): where
  the helpers find the router and the portal when those run on this host (the local stack),
  and replies to connections the host opened; everything else is refused;
- the internet: open (tools install packages, fetch data; routers and the portal are there).

It is enforced with iptables on the host, as Docker's own rules are: one chain per bridge
(``DIT4C-FWD-<bridge>``, ``DIT4C-IN-<bridge>``), jumped to from ``DOCKER-USER`` (traffic the host
forwards: the LAN, metadata) and ``INPUT`` (traffic to the host), only for packets coming in on
that bridge. Applying it is idempotent (the chains are rebuilt, the jumps added once), so the
daemon applies it at start and at each reconcile (a firewall reload may have flushed it).

Why not per container: the helpers and the tool share one network namespace, so one address;
inside it only a uid could tell them apart, and a tool running as root may take any uid. So
the ports allowed on the host are allowed to the tool too: they are services that are public
in a deployment (router, portal, image server, storage endpoint), what stays closed is the rest
of the host (SSH, the Docker API, the node's metrics, databases).
"""

from __future__ import annotations

import ipaddress
import logging
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

from node_daemon.errors import ConfigError

log = logging.getLogger("dit4c.node.egress")

LINK_LOCAL = "169.254.0.0/16"
LAN = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10")
"""Private and shared address space: where a node's LAN (and its cloud VPC) is."""
OPEN = "open"


@dataclass(frozen=True)
class EgressPolicy:
    enforce: bool = True
    """``DIT4C_NODE_EGRESS=off`` leaves pods' traffic alone (a node that cannot run iptables,
    e.g. the daemon in a container without ``NET_ADMIN``); the daemon says so at start."""
    host_ports: tuple[int, ...] = ()
    lan: tuple[str, ...] = ()
    """CIDRs of the LAN pods may reach; ``("open",)`` for all of it."""

    @classmethod
    def parse(cls, mode: str, host_ports: str, lan: str) -> EgressPolicy:
        if mode not in ("enforce", "off"):
            raise ConfigError(f"DIT4C_NODE_EGRESS is 'enforce' or 'off', not {mode!r}")
        ports = []
        for item in (p.strip() for p in host_ports.split(",")):
            if not item:
                continue
            if not item.isdigit() or not 0 < int(item) < 65536:
                raise ConfigError(f"DIT4C_NODE_POD_HOST_PORTS: {item!r} is not a port")
            ports.append(int(item))
        cidrs = tuple(c.strip() for c in lan.split(",") if c.strip())
        for cidr in cidrs:
            if cidr != OPEN and not _cidr(cidr):
                raise ConfigError(f"DIT4C_NODE_POD_LAN: {cidr!r} is not a CIDR (or 'open')")
        return cls(mode == "enforce", tuple(sorted(set(ports))), cidrs)

    def rules(self, bridge: str) -> dict[str, list[list[str]]]:
        """Each chain's rules (``iptables`` arguments after ``-A <chain>``)."""
        forward: list[list[str]] = [["-d", LINK_LOCAL, "-j", "DROP"]]
        if OPEN not in self.lan:
            forward += [["-d", cidr, "-j", "RETURN"] for cidr in self.lan]
            forward += [["-d", cidr, "-j", "REJECT", "--reject-with", "icmp-admin-prohibited"]
                        for cidr in LAN]
        to_host: list[list[str]] = [
            ["-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "RETURN"]]
        if self.host_ports:
            to_host.append(["-p", "tcp", "-m", "multiport", "--dports",
                            ",".join(map(str, self.host_ports)), "-j", "RETURN"])
        to_host.append(["-j", "REJECT", "--reject-with", "icmp-admin-prohibited"])
        return {forward_chain(bridge): forward, input_chain(bridge): to_host}


def forward_chain(bridge: str) -> str:
    return f"DIT4C-FWD-{bridge}"


def input_chain(bridge: str) -> str:
    return f"DIT4C-IN-{bridge}"


def _cidr(text: str) -> bool:
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        return False
    return True


def bridge_of(attrs: dict[str, object]) -> str:
    """The Linux bridge of a Docker bridge network (its ``docker network inspect``)."""
    options = attrs.get("Options")
    name = options.get("com.docker.network.bridge.name") if isinstance(options, dict) else None
    if isinstance(name, str) and name:
        return name
    return f"br-{str(attrs['Id'])[:12]}"


def apply(policy: EgressPolicy, bridge: str, iptables: str | None = None) -> None:
    """Make the bridge's chains say ``policy`` (ConfigError if iptables cannot)."""
    if not policy.enforce:
        return
    binary = iptables or shutil.which("iptables")
    if binary is None:
        raise ConfigError("DIT4C_NODE_EGRESS=enforce needs iptables on the node (or set it to "
                          "'off', and pods reach the host, its LAN and 169.254.169.254)")

    def run(args: Sequence[str], *, check: bool = True) -> bool:
        done = subprocess.run([binary, "-w", "5", *args], capture_output=True,
                              text=True, timeout=30, check=False)
        if check and done.returncode != 0:
            raise ConfigError(f"DIT4C_NODE_EGRESS=enforce: iptables {' '.join(args)}: "
                              f"{done.stderr.strip() or done.returncode}")
        return done.returncode == 0

    for chain, rules in policy.rules(bridge).items():
        run(["-N", chain], check=False)  # exists already: fine
        run(["-F", chain])
        for rule in rules:
            run(["-A", chain, *rule])
    for parent, chain in (("DOCKER-USER", forward_chain(bridge)),
                          ("INPUT", input_chain(bridge))):
        if not run(["-C", parent, "-i", bridge, "-j", chain], check=False):
            run(["-I", parent, "1", "-i", bridge, "-j", chain])
    log.info("egress policy on %s: host ports %s, LAN %s, metadata dropped", bridge,
             ",".join(map(str, policy.host_ports)) or "none", ",".join(policy.lan) or "closed")


def remove(bridge: str, iptables: str | None = None) -> None:
    """Take the bridge's chains away (its network is gone); what is already gone is fine."""
    binary = iptables or shutil.which("iptables")
    if binary is None:
        return
    for parent, chain in (("DOCKER-USER", forward_chain(bridge)),
                          ("INPUT", input_chain(bridge))):
        for args in (["-D", parent, "-i", bridge, "-j", chain], ["-F", chain], ["-X", chain]):
            subprocess.run([binary, "-w", "5", *args], capture_output=True,
                           timeout=30, check=False)
