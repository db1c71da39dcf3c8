"""The tunnel endpoint: listener helpers dial in over WebSocket and serve one hostname each.

The proxy hands over any connection whose request is for ``TUNNEL_PATH`` on a host that is not
an instance. The handshake carries ``Authorization: Bearer <tunnel token>`` and the host in
``protocol.tunnel.HOST_HEADER``; the token must be signed by the control plane, unexpired, not
revoked, and bind exactly that host, which must be ``<token sub>.<domain>``. Anything else is
refused before the upgrade (400/401/403/429, plain-text reason; 503 while the router cannot
check tokens yet: no JWKS, or the revocations list not read). Then the connection becomes an
:class:`edge_router.websocket.TunnelSocket` carrying a :class:`protocol.tunnel.Mux`.

The tunnel lives until its token expires; a renewed token for the same host (a ``TOKEN``
frame, checked as at the handshake) moves that on. A renewed token that does not pass ends the
tunnel.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from http import HTTPStatus
from typing import Any

from edge_router.errors import KeysUnavailable, TunnelRefused
from edge_router.keys import KeyCache
from edge_router.metrics import Stats
from edge_router.routes import RouteTable, Tunnel
from edge_router.websocket import CLOSE_GOING_AWAY, CLOSE_POLICY, TunnelSocket, accept_key
from protocol.errors import TokenError
from protocol.http1 import RequestHead
from protocol.tunnel import HOST_HEADER, Mux

log = logging.getLogger("dit4c.router.tunnel")

HANDSHAKE_TIMEOUT = 10.0


def plain_response(status: int, text: str) -> bytes:
    body = (text + "\n").encode()
    return (f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\nContent-Type: text/plain; "
            f"charset=utf-8\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            ).encode() + body


class TunnelEndpoint:
    """Accepts, verifies and serves tunnels; registers them in the route table."""

    def __init__(self, routes: RouteTable, keys: KeyCache, stats: Stats, *, window: int,
                 max_streams: int, heartbeat: float,
                 revocations_read: Callable[[], bool] = lambda: True) -> None:
        self.routes = routes
        self.keys = keys
        self.stats = stats
        self.window = window
        self.max_streams = max_streams
        self.heartbeat = heartbeat
        self.revocations_read = revocations_read
        self.sockets: set[TunnelSocket] = set()
        self._handshakes: set[asyncio.Task[None]] = set()

    def accept(self, transport: asyncio.Transport, head: RequestHead, leftover: bytes,
               remote: str) -> None:
        """Take over ``transport`` (its protocol is replaced once the handshake succeeds)."""
        transport.pause_reading()
        self._track(self._handshake(transport, head, leftover, remote))

    def _track(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._handshakes.add(task)
        task.add_done_callback(self._handshakes.discard)

    async def _verify(self, head: RequestHead) -> tuple[bytes, str, str, dict[str, Any]]:
        headers = {name.lower(): value for name, value in head.headers}
        key = headers.get(b"sec-websocket-key", b"")
        if (head.method != b"GET" or (head.upgrade or b"").lower() != b"websocket"
                or headers.get(b"sec-websocket-version") != b"13" or not key):
            raise TunnelRefused("a WebSocket upgrade (version 13) is required", 400)
        scheme, _, token = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise TunnelRefused("a tunnel token is required (Authorization: Bearer)", 401)
        hostname = headers.get(HOST_HEADER.lower().encode(), b"").decode("latin-1")
        hostname = hostname.strip().lower()
        if not hostname:
            raise TunnelRefused(f"the {HOST_HEADER} header is required", 400)
        if not self.revocations_read():
            raise TunnelRefused("the router has not read the revocations list yet", 503)
        try:
            claims = await asyncio.wait_for(
                self.keys.verify_tunnel(token.strip(), hostname), HANDSHAKE_TIMEOUT)
        except TokenError as exc:
            raise TunnelRefused(str(exc), 401) from None
        except KeysUnavailable as exc:
            raise TunnelRefused(str(exc), 503) from None
        except TimeoutError:
            raise TunnelRefused("the router cannot check tokens right now", 503) from None
        instance_id = str(claims["sub"])
        self.routes.check(hostname, instance_id, float(claims["iat"]))
        return key, hostname, instance_id, claims

    async def _handshake(self, transport: asyncio.Transport, head: RequestHead,
                         leftover: bytes, remote: str) -> None:
        try:
            key, hostname, instance_id, claims = await self._verify(head)
            if transport.is_closing():
                return
            mux = Mux(window=self.window, max_streams=self.max_streams)
            sock = TunnelSocket(mux, lambda reason: None, heartbeat=self.heartbeat)
            tunnel = Tunnel(hostname, instance_id, float(claims["iat"]), mux,
                            lambda reason: sock.close(CLOSE_POLICY, reason),
                            expires_at=float(claims["exp"]))
            mux.on_token = lambda token: self._track(self._renew(tunnel, token))
            self.routes.add(tunnel)  # checks again: a revocation may have come meanwhile
        except TunnelRefused as exc:
            self.stats.tunnels_refused += 1
            log.warning("tunnel refused from %s: %s", remote, exc)
            transport.write(plain_response(exc.status, str(exc)))
            transport.close()
            return

        def closed(reason: str) -> None:
            self.routes.remove(tunnel)
            self.sockets.discard(sock)
            log.info("tunnel down: %s (%s)", hostname, reason)

        sock.on_closed = closed
        self.stats.tunnels_opened += 1
        self.sockets.add(sock)
        transport.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                        b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept_key(key)
                        + b"\r\n\r\n")
        transport.set_protocol(sock)
        sock.connection_made(transport)
        if leftover:
            sock.data_received(leftover)
        transport.resume_reading()
        log.info("tunnel up: %s from %s", hostname, remote)

    async def _renew(self, tunnel: Tunnel, token: str) -> None:
        """A renewed token came over ``tunnel``: check it as at the handshake (same host, not
        revoked), then the tunnel lives until it expires."""
        try:
            claims = await asyncio.wait_for(self.keys.verify_tunnel(token, tunnel.hostname),
                                            HANDSHAKE_TIMEOUT)
            if str(claims["sub"]) != tunnel.instance_id:
                raise TokenError("the renewed token is for another instance")
            self.routes.check_not_revoked(tunnel.hostname, float(claims["iat"]))
        except (TokenError, TunnelRefused) as exc:
            log.warning("renewed token for %s refused: %s", tunnel.hostname, exc)
            self.routes.remove(tunnel)
            tunnel.close(f"renewed token refused: {exc}")
            return
        except (KeysUnavailable, TimeoutError) as exc:
            log.warning("cannot check a renewed token for %s now: %s", tunnel.hostname, exc)
            return  # the listener sends it again; meanwhile the old one still holds
        tunnel.issued_at = max(tunnel.issued_at, float(claims["iat"]))
        tunnel.expires_at = max(tunnel.expires_at, float(claims["exp"]))
        log.info("tunnel token renewed for %s", tunnel.hostname)

    def check(self, now: float) -> None:
        for sock in list(self.sockets):
            sock.check(now)

    async def close_all(self) -> None:
        for task in list(self._handshakes):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self._handshakes, return_exceptions=True)
        for sock in list(self.sockets):
            sock.close(CLOSE_GOING_AWAY, "router shutting down")
