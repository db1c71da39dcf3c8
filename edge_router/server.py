"""The router process: public listeners, tunnel endpoint, metrics, queues, timeouts.

:class:`Router` owns every socket and background task and closes them in :meth:`Router.stop`;
:meth:`Router.reload_tls` reads the certificate files again (``SIGHUP``, see
:mod:`edge_router.tls`).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from edge_router.config import RouterConfig
from edge_router.keys import Fetch, KeyCache, http_fetcher
from edge_router.metrics import Stats, StatsCollector
from edge_router.proxy import ProxyContext, client_factory
from edge_router.queues import ActivityReporter, RevocationListener, sqs_client
from edge_router.revocations import RevocationList, http_list
from edge_router.routes import RouteTable
from edge_router.tls import Certificates
from edge_router.tunnels import TunnelEndpoint
from protocol import heap
from protocol.tunnel import DEFAULT_WINDOW

log = logging.getLogger("dit4c.router")

SWEEP_SECONDS = 1.0


class Router:
    """One edge router. ``fetch_jwks`` and ``sqs`` may be passed in (tests); by default the
    JWKS comes over HTTP from ``config.jwks_url`` and SQS from boto3."""

    def __init__(self, config: RouterConfig, *, fetch_jwks: Fetch | None = None,
                 sqs: Any = None) -> None:
        self.config = config
        self.stats = Stats()
        self.routes = RouteTable(config.domain,
                                 max_tunnels_per_host=config.max_tunnels_per_host)
        self._fetch_jwks = fetch_jwks
        self._sqs = sqs
        self._session: aiohttp.ClientSession | None = None
        self._servers: list[asyncio.AbstractServer] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._runners: list[web.BaseRunner] = []
        self.addresses: list[tuple[str, int]] = []
        """Bound plain-HTTP addresses (port 0 resolved), in ``config.listen`` order."""
        self.tls_addresses: list[tuple[str, int]] = []
        self.redirect_addresses: list[tuple[str, int]] = []
        self.certificates: Certificates | None = None
        self.metrics_address: tuple[str, int] | None = None
        self.endpoint: TunnelEndpoint | None = None
        self.revocations: RevocationList | None = None
        self.proxy: ProxyContext | None = None

    async def start(self) -> None:
        cfg = self.config
        if cfg.tls_listen:  # first: files that do not load stop the start before anything opens
            assert cfg.tls_cert is not None and cfg.tls_key is not None
            self.certificates = Certificates(cfg.tls_cert, cfg.tls_key)
        fetch = self._fetch_jwks
        if fetch is None:
            self._session = aiohttp.ClientSession()
            fetch = http_fetcher(self._session, cfg.jwks_url)
        keys = KeyCache(fetch, issuer=cfg.token_issuer, max_age=cfg.jwks_refresh,
                        leeway=cfg.token_leeway)
        revocations = None
        if cfg.revocations_url:
            if self._session is None:
                self._session = aiohttp.ClientSession()
            revocations = RevocationList(http_list(self._session, cfg.revocations_url),
                                         self.routes)
        self.revocations = revocations
        self.endpoint = TunnelEndpoint(
            self.routes, keys, self.stats, window=DEFAULT_WINDOW, max_streams=cfg.max_streams,
            heartbeat=cfg.heartbeat, revocations_read=lambda: revocations is None
            or revocations.loaded.is_set())
        ctx = self.proxy = ProxyContext(cfg, self.routes, self.stats, self.endpoint)
        await self._start_listeners(ctx)
        if cfg.metrics_listen is not None:
            await self._start_metrics(*cfg.metrics_listen)
        self._spawn(self._sweep(ctx))
        self._spawn(self._refresh_keys(keys))
        if revocations is not None:
            self._spawn(revocations.run())
        await self._start_queues()
        log.info("edge router for *.%s on %s", cfg.domain,
                 ", ".join(f"{h}:{p}" for h, p in self.addresses + self.tls_addresses))
        if self.redirect_addresses:
            log.info("redirecting to HTTPS on %s",
                     ", ".join(f"{h}:{p}" for h, p in self.redirect_addresses))

    async def _start_queues(self) -> None:
        """Revocations from the router's own queue; activity reports (the local stack's)."""
        cfg = self.config
        if not (cfg.revocations_queue_url or cfg.events_queue_url):
            return
        sqs = self._sqs if self._sqs is not None else await asyncio.to_thread(
            sqs_client, cfg.aws_endpoint_url)
        if cfg.revocations_queue_url:
            self._spawn(RevocationListener(sqs, cfg.revocations_queue_url, self.routes).run())
        if cfg.events_queue_url:
            self.reporter = ActivityReporter(sqs, cfg.events_queue_url, self.routes,
                                             router_id=cfg.router_id,
                                             interval=cfg.activity_interval)
            self._spawn(self.reporter.run())

    async def _start_listeners(self, ctx: ProxyContext) -> None:
        """The public sockets: plain HTTP, HTTPS, and the redirects to HTTPS."""
        cfg = self.config
        loop = asyncio.get_running_loop()

        async def listen(factory: Callable[[], asyncio.Protocol], host: str, port: int,
                         tls: ssl.SSLContext | None = None) -> tuple[str, int]:
            srv = await loop.create_server(factory, host, port, ssl=tls, reuse_address=True,
                                           backlog=1024)
            self._servers.append(srv)
            bound_host, bound_port = srv.sockets[0].getsockname()[:2]
            return bound_host, bound_port

        for host, port in cfg.listen:
            self.addresses.append(await listen(client_factory(ctx, b"http"), host, port))
        if self.certificates is not None:
            for host, port in cfg.tls_listen:
                self.tls_addresses.append(await listen(client_factory(ctx, b"https"), host,
                                                       port, self.certificates.context))
        for host, port in cfg.redirect_listen:
            https_port = cfg.https_port or self.tls_addresses[0][1]
            self.redirect_addresses.append(
                await listen(client_factory(ctx, b"http", https_port), host, port))

    def _spawn(self, coro: Awaitable[None]) -> None:
        self._tasks.append(asyncio.ensure_future(coro))

    async def _start_metrics(self, host: str, port: int) -> None:
        registry = CollectorRegistry()
        registry.register(StatsCollector(self.stats, {
            "tunnels": ("Connected tunnels", lambda: float(self.routes.tunnel_count)),
            "streams": ("Open streams over all tunnels",
                        lambda: float(self.routes.stream_count)),
            "heap_frozen_objects": ("Objects the garbage collector's full passes skip "
                                    "(frozen after start-up: protocol.heap)",
                                    lambda: float(gc.get_freeze_count())),
        }))

        async def metrics(request: web.Request) -> web.Response:
            return web.Response(body=generate_latest(registry),
                                headers={"Content-Type": CONTENT_TYPE_LATEST})

        app = web.Application()
        app.router.add_get("/metrics", metrics)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        self._runners.append(runner)
        site = web.TCPSite(runner, host, port)
        await site.start()
        host, port = runner.addresses[-1][:2]
        self.metrics_address = (host, port)

    def reload_tls(self) -> bool:
        """Read the certificate files again (``SIGHUP``): new handshakes use them, open
        connections and tunnels stay. False when there is no TLS or the files were refused
        (the previous certificate stays)."""
        if self.certificates is None:
            log.info("no TLS listener: nothing to reload")
            return False
        return self.certificates.reload()

    async def _sweep(self, ctx: ProxyContext) -> None:
        while True:
            await asyncio.sleep(SWEEP_SECONDS)
            ctx.sweep(time.monotonic())
            self.routes.expire(self.config.token_leeway)

    async def _refresh_keys(self, keys: KeyCache) -> None:
        while True:
            with contextlib.suppress(Exception):
                await keys.refresh()
            await asyncio.sleep(self.config.jwks_refresh / 2)

    async def stop(self) -> None:
        for srv in self._servers:
            srv.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.proxy is not None:
            self.proxy.close_all()
        if self.endpoint is not None:
            await self.endpoint.close_all()
        for runner in self._runners:
            await runner.cleanup()
        for srv in self._servers:
            await srv.wait_closed()
        if self._session is not None:
            await self._session.close()


async def run(config: RouterConfig, until: Callable[[Router], Awaitable[None]]) -> None:
    """Start a router, wait for ``until(router)`` (which may act on it: signals), stop it."""
    router = Router(config)
    await router.start()
    heap.freeze()
    try:
        await until(router)
    finally:
        await router.stop()
