"""The tunnel endpoint: listener helpers dial in over WebSocket and serve one hostname each.

The handshake carries ``Authorization: Bearer <tunnel token>`` and the host in
``protocol.tunnel.HOST_HEADER``; the token must be signed by the control plane, unexpired, not
revoked, and bind exactly that host, which must be ``<token sub>.<domain>``. Anything else is
refused before the upgrade with 401/403 and a plain-text reason.
"""

from __future__ import annotations

import logging

from aiohttp import web

from edge_router.errors import TunnelRefused
from edge_router.keys import KeyCache
from edge_router.metrics import Stats
from edge_router.routes import RouteTable, Tunnel
from protocol.errors import TokenError
from protocol.tunnel import HOST_HEADER, MAX_MESSAGE_BYTES, TUNNEL_PATH, Mux, serve

log = logging.getLogger("dit4c.router.tunnel")

CLOSE_REVOKED = 4003


class TunnelEndpoint:
    """Accepts, verifies and serves tunnels; registers them in the route table."""

    def __init__(self, routes: RouteTable, keys: KeyCache, stats: Stats, *, window: int,
                 max_streams: int, heartbeat: float) -> None:
        self.routes = routes
        self.keys = keys
        self.stats = stats
        self.window = window
        self.max_streams = max_streams
        self.heartbeat = heartbeat
        self.sockets: set[web.WebSocketResponse] = set()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get(TUNNEL_PATH, self.handle)
        return app

    async def _verify(self, request: web.Request) -> tuple[str, str, float]:
        auth = request.headers.get("Authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise TunnelRefused("a tunnel token is required (Authorization: Bearer)", 401)
        hostname = request.headers.get(HOST_HEADER, "").strip().lower()
        if not hostname:
            raise TunnelRefused(f"the {HOST_HEADER} header is required", 400)
        try:
            claims = await self.keys.verify_tunnel(token.strip(), hostname)
        except TokenError as exc:
            raise TunnelRefused(str(exc), 401) from None
        instance_id = str(claims["sub"])
        self.routes.check(hostname, instance_id, float(claims["iat"]))
        return hostname, instance_id, float(claims["iat"])

    async def handle(self, request: web.Request) -> web.StreamResponse:
        try:
            hostname, instance_id, issued_at = await self._verify(request)
        except TunnelRefused as exc:
            self.stats.tunnels_refused += 1
            log.warning("tunnel refused from %s: %s", request.remote, exc)
            return web.Response(status=exc.status, text=f"{exc}\n")
        ws = web.WebSocketResponse(heartbeat=self.heartbeat, max_msg_size=MAX_MESSAGE_BYTES,
                                   compress=False)
        await ws.prepare(request)
        mux = Mux(window=self.window, max_streams=self.max_streams)
        tunnel = Tunnel(hostname, instance_id, issued_at, mux, mux.close)
        try:
            self.routes.add(tunnel)  # checked again: a revocation may have come meanwhile
        except TunnelRefused as exc:
            await ws.close(code=CLOSE_REVOKED, message=str(exc).encode()[:120])
            return ws
        self.stats.tunnels_opened += 1
        self.sockets.add(ws)
        log.info("tunnel up: %s from %s", hostname, request.remote)
        try:
            reason = await serve(ws, mux)
        finally:
            self.sockets.discard(ws)
            self.routes.remove(tunnel)
            mux.close("tunnel closed")
        log.info("tunnel down: %s (%s)", hostname, reason)
        return ws

    async def close_all(self) -> None:
        for ws in list(self.sockets):
            await ws.close(code=1001, message=b"router shutting down")
