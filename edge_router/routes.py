"""The route table: which tunnel serves which hostname, and which hosts are revoked.

A hostname is *known* once a tunnel for it has connected to this router (until revoked);
a known host without a connected tunnel is answered "starting or offline" rather than 404.
Revocation is by issue time: a token issued before the revocation of its host is refused
for good, while a token the control plane issues afterwards (an instance made reachable again)
is accepted.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from edge_router.errors import TunnelRefused
from protocol.ids import instance_of_host
from protocol.tunnel import Mux

KNOWN_FOR_SECONDS = 24 * 3600.0
"""How long a host with no tunnel is still "known" (answered 503, not 404)."""
REVOKED_FOR_SECONDS = 31 * 24 * 3600.0
"""Longer than any tunnel token lives, so a revoked token can never come back."""


@dataclass(eq=False)
class Tunnel:
    """One connected tunnel, as the proxy sees it."""

    hostname: str
    instance_id: str
    issued_at: float
    mux: Mux
    close: Callable[[str], None]
    """Ends the tunnel (its WebSocket and every stream) with a reason."""
    connected_at: float = field(default_factory=time.time)


class RouteTable:
    """Hostnames under ``domain`` to their tunnels, newest first."""

    def __init__(self, domain: str, *, max_tunnels_per_host: int = 4,
                 clock: Callable[[], float] = time.time) -> None:
        self.domain = domain.lower()
        self.max_tunnels_per_host = max_tunnels_per_host
        self._clock = clock
        self._tunnels: dict[str, list[Tunnel]] = {}
        self._known: dict[str, float] = {}
        self._revoked: dict[str, float] = {}
        self.last_activity: dict[str, float] = {}
        """instance id -> wall time of the last request carried for it."""

    def instance_id(self, host: str) -> str | None:
        """The instance id if ``host`` (no port) is ``<id>.<domain>``, else None."""
        return instance_of_host(host, self.domain)

    def lookup(self, host: str) -> Tunnel | None:
        tunnels = self._tunnels.get(host)
        return tunnels[0] if tunnels else None

    def known(self, host: str) -> bool:
        seen = self._known.get(host)
        return seen is not None and self._clock() - seen < KNOWN_FOR_SECONDS

    def check(self, hostname: str, instance_id: str, issued_at: float) -> None:
        """Raise :class:`TunnelRefused` unless a tunnel for ``hostname`` may connect."""
        if self.instance_id(hostname) != instance_id:
            raise TunnelRefused(f"{hostname} is not instance {instance_id!r} under "
                                f"{self.domain}")
        revoked = self._revoked.get(hostname)
        if revoked is not None and issued_at <= revoked:
            raise TunnelRefused(f"the token for {hostname} has been revoked")
        if len(self._tunnels.get(hostname, ())) >= self.max_tunnels_per_host:
            raise TunnelRefused(f"{hostname} already has {self.max_tunnels_per_host} tunnels",
                                status=429)

    def add(self, tunnel: Tunnel) -> None:
        self.check(tunnel.hostname, tunnel.instance_id, tunnel.issued_at)
        self._tunnels.setdefault(tunnel.hostname, []).insert(0, tunnel)
        self._known[tunnel.hostname] = self._clock()

    def remove(self, tunnel: Tunnel) -> None:
        tunnels = self._tunnels.get(tunnel.hostname)
        if tunnels and tunnel in tunnels:
            tunnels.remove(tunnel)
            if not tunnels:
                del self._tunnels[tunnel.hostname]
            if tunnel.hostname in self._known:
                self._known[tunnel.hostname] = self._clock()

    def revoke(self, hostname: str, *, at: float | None = None, reason: str = "revoked") -> int:
        """Refuse tokens for ``hostname`` issued up to ``at``; close its tunnels; how many."""
        hostname = hostname.lower()
        now = self._clock()
        at = now if at is None else at
        self._revoked[hostname] = max(at, self._revoked.get(hostname, 0.0))
        self._known.pop(hostname, None)
        closed = 0
        for tunnel in list(self._tunnels.get(hostname, ())):
            if tunnel.issued_at <= self._revoked[hostname]:
                self.remove(tunnel)
                tunnel.close(reason)
                closed += 1
        # Bounded memory: forget what no token can outlive.
        for table, age in ((self._revoked, REVOKED_FOR_SECONDS), (self._known, KNOWN_FOR_SECONDS)):
            for host in [h for h, t in table.items() if now - t > age]:
                del table[host]
        return closed

    def tunnels(self) -> list[Tunnel]:
        return [t for ts in self._tunnels.values() for t in ts]

    @property
    def tunnel_count(self) -> int:
        return sum(len(ts) for ts in self._tunnels.values())

    @property
    def stream_count(self) -> int:
        return sum(len(t.mux.streams) for ts in self._tunnels.values() for t in ts)
