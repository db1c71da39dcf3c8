"""The control plane's revocations list, read when the router starts and every few minutes.

Revocations reach a running router over its queue (:mod:`edge_router.queues`), and it keeps
them in memory. A router that starts knows none of those it missed, so it reads the list
(``GET /api/revocations``: host digest, revoked at, forget at) before it accepts any tunnel:
until the first read succeeds, tunnels are answered 503 and the read is retried every
``RETRY_SECONDS``, like the JWKS. Later reads (every ``RELOAD_SECONDS``) also make up for a
queue message that was lost.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from edge_router.routes import RouteTable

log = logging.getLogger("dit4c.router.revocations")

RETRY_SECONDS = 2.0
RELOAD_SECONDS = 300.0

Entries = list[tuple[str, float, float]]
FetchList = Callable[[], Awaitable[Entries]]


def http_list(session: aiohttp.ClientSession, url: str) -> FetchList:
    async def fetch() -> Entries:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=10)) as response:
            response.raise_for_status()
            return parse(await response.json(content_type=None))
    return fetch


def parse(document: Any) -> Entries:
    """The list's entries; ValueError if it is not the control plane's reply
    (``control_plane.replies.Revocations``)."""
    try:
        return [(str(e["host_sha256"]), float(e["revoked_at"]), float(e["expires_at"]))
                for e in document["revocations"]]
    except (TypeError, KeyError, ValueError) as exc:
        raise ValueError(f"not a revocations list: {exc!r}") from None


class RevocationList:
    """Keeps ``routes`` up to date with the list; ``loaded`` once a first read succeeded."""

    def __init__(self, fetch: FetchList, routes: RouteTable) -> None:
        self.fetch = fetch
        self.routes = routes
        self.loaded = asyncio.Event()

    async def load(self) -> bool:
        try:
            entries = await self.fetch()
        except (OSError, aiohttp.ClientError, TimeoutError, ValueError) as exc:
            log.warning("cannot read the revocations list: %s", exc)
            return False
        closed = self.routes.load(entries)
        if not self.loaded.is_set():
            log.info("revocations list read: %d revoked host(s)", len(entries))
        elif closed:
            log.info("revocations list: %d tunnel(s) closed", closed)
        self.loaded.set()
        return True

    async def run(self) -> None:
        while True:
            ok = await self.load()
            await asyncio.sleep(RELOAD_SECONDS if ok and self.loaded.is_set()
                                else RETRY_SECONDS)
