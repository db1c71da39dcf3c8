"""The route table: which tunnel serves which hostname, and which hosts are revoked.

A hostname is *known* once a tunnel for it has connected to this router (until revoked);
a known host without a connected tunnel is answered "starting or offline" rather than 404.
Revocation is by issue time: a token issued before the revocation of its host is refused
for good, while a token the control plane issues afterwards (an instance made reachable again,
or placed again on another node) is accepted. Revocations are kept by host digest
(:func:`protocol.tokens.host_digest`), as the control plane's list names them, for as long as a
token issued before them can live; they come from the revocations queue while the router runs
and from the list at start (:meth:`RouteTable.load`).

A tunnel lives as long as its token: past ``expires_at`` (plus the leeway) it is closed unless
the listener sent a renewed token over it (``protocol.tunnel.TOKEN``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from edge_router.errors import TunnelRefused
from protocol.ids import instance_of_host
from protocol.tokens import REVOCATION_KEEP_SECONDS, host_digest
from protocol.tunnel import Mux

KNOWN_FOR_SECONDS = 24 * 3600.0
"""How long a host with no tunnel is still "known" (answered 503, not 404)."""


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
    expires_at: float = math.inf
    """Its token's ``exp``; renewed by ``TOKEN`` frames."""
    client_streams: dict[str, int] = field(default_factory=dict)
    """Open streams by client (``edge_router.proxy.client_key``): one client may hold at most
    ``max_streams_per_client`` of the tunnel's ``max_streams``."""


class RouteTable:
    """Hostnames under ``domain`` to their tunnels, newest first."""

    def __init__(self, domain: str, *, max_tunnels_per_host: int = 4,
                 clock: Callable[[], float] = time.time) -> None:
        self.domain = domain.lower()
        self.max_tunnels_per_host = max_tunnels_per_host
        self._clock = clock
        self._tunnels: dict[str, list[Tunnel]] = {}
        self._known: dict[str, float] = {}
        self._revoked: dict[str, tuple[float, float]] = {}
        """host digest -> (revoked at, forget at)."""
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
        self.check_not_revoked(hostname, issued_at)
        if len(self._tunnels.get(hostname, ())) >= self.max_tunnels_per_host:
            raise TunnelRefused(f"{hostname} already has {self.max_tunnels_per_host} tunnels",
                                status=429)

    def check_not_revoked(self, hostname: str, issued_at: float) -> None:
        """Raise :class:`TunnelRefused` if tokens for ``hostname`` issued at ``issued_at``
        were revoked."""
        revoked = self._revoked.get(host_digest(hostname))
        if revoked is not None and issued_at <= revoked[0]:
            raise TunnelRefused(f"the token for {hostname} has been revoked")

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
        at = self._clock() if at is None else at
        self._remember(host_digest(hostname), at, at + REVOCATION_KEEP_SECONDS)
        self._known.pop(hostname, None)
        closed = 0
        for tunnel in list(self._tunnels.get(hostname, ())):
            if tunnel.issued_at <= self._revoked[host_digest(hostname)][0]:
                self.remove(tunnel)
                tunnel.close(reason)
                closed += 1
        self._forget_old()
        return closed

    def load(self, revoked: Iterable[tuple[str, float, float]]) -> int:
        """Merge the control plane's list: ``(host digest, revoked at, forget at)``. Tunnels
        it revokes are closed (a router that starts has none yet; a reload may). How many."""
        for digest, at, until in revoked:
            self._remember(digest, at, until)
        closed = 0
        for tunnel in self.tunnels():
            revoked_at = self._revoked.get(host_digest(tunnel.hostname))
            if revoked_at is not None and tunnel.issued_at <= revoked_at[0]:
                self.remove(tunnel)
                self._known.pop(tunnel.hostname, None)
                tunnel.close("revoked")
                closed += 1
        self._forget_old()
        return closed

    def _remember(self, digest: str, at: float, until: float) -> None:
        old_at, old_until = self._revoked.get(digest, (0.0, 0.0))
        self._revoked[digest] = (max(at, old_at), max(until, old_until))

    def _forget_old(self) -> None:
        """Bounded memory: forget what no token can outlive."""
        now = self._clock()
        for digest in [d for d, (_, until) in self._revoked.items() if until < now]:
            del self._revoked[digest]
        for host in [h for h, t in self._known.items() if now - t > KNOWN_FOR_SECONDS]:
            del self._known[host]

    def expire(self, leeway: float) -> int:
        """Close the tunnels whose token expired more than ``leeway`` seconds ago (no renewal
        came over them); how many."""
        now = self._clock()
        expired = [t for t in self.tunnels() if t.expires_at + leeway < now]
        for tunnel in expired:
            self.remove(tunnel)
            tunnel.close("tunnel token expired")
        return len(expired)

    def tunnels(self) -> list[Tunnel]:
        return [t for ts in self._tunnels.values() for t in ts]

    @property
    def tunnel_count(self) -> int:
        return sum(len(ts) for ts in self._tunnels.values())

    @property
    def stream_count(self) -> int:
        return sum(len(t.mux.streams) for ts in self._tunnels.values() for t in ts)
