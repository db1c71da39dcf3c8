"""The control plane's signing keys, fetched from its JWKS, cached and refreshed."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from edge_router.errors import KeysUnavailable
from protocol.errors import TokenError
from protocol.tokens import DEFAULT_LEEWAY_SECONDS, KeySet, unverified_kid, verify_tunnel

log = logging.getLogger("dit4c.router.keys")

FIRST_FETCH_RETRY_SECONDS = 2.0
"""While no JWKS has ever been fetched (the control plane starting too), retry this often."""
UNKNOWN_KID_REFRESH_SECONDS = 10.0
"""A token with an unknown kid triggers a refetch at most this often (rotation, not a DoS)."""

Fetch = Callable[[], Awaitable[dict[str, Any]]]


def http_fetcher(session: aiohttp.ClientSession, url: str) -> Fetch:
    async def fetch() -> dict[str, Any]:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=10)) as response:
            response.raise_for_status()
            document: dict[str, Any] = await response.json(content_type=None)
            return document
    return fetch


class KeyCache:
    """Verifies tunnel tokens against a JWKS that is refreshed every ``max_age`` seconds and
    when a token names a ``kid`` we do not hold (rate-limited)."""

    def __init__(self, fetch: Fetch, *, issuer: str | None = None, max_age: float = 300.0,
                 leeway: int = DEFAULT_LEEWAY_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._fetch = fetch
        self._issuer = issuer
        self._leeway = leeway
        self._max_age = max_age
        self._clock = clock
        self._keys = KeySet({})
        self._fetched_at: float | None = None
        """When keys were last fetched successfully."""
        self._attempted_at: float | None = None
        self._lock = asyncio.Lock()

    async def refresh(self, *, force: bool = False) -> None:
        """Fetch the JWKS if it is older than ``max_age`` (``force``: older than the
        unknown-kid interval); until a first fetch succeeds, retry every few seconds."""
        async with self._lock:
            now = self._clock()
            if self._fetched_at is None:
                if (self._attempted_at is not None
                        and now - self._attempted_at < FIRST_FETCH_RETRY_SECONDS):
                    return
            elif now - max(self._fetched_at, self._attempted_at or 0.0) < (
                    UNKNOWN_KID_REFRESH_SECONDS if force else self._max_age):
                return
            self._attempted_at = now
            try:
                document = await self._fetch()
                self._keys = KeySet.from_jwks(document)
            except (OSError, aiohttp.ClientError, TokenError, ValueError) as exc:
                log.warning("cannot refresh the JWKS: %s", exc)
                return
            self._fetched_at = now

    async def verify_tunnel(self, token: str, hostname: str) -> dict[str, Any]:
        """The token's claims if it is valid and binds ``hostname``; else TokenError, or
        KeysUnavailable while no JWKS has ever been fetched (a temporary condition)."""
        kid = unverified_kid(token)
        await self.refresh()
        if kid not in self._keys:
            await self.refresh(force=True)
        if self._fetched_at is None:
            raise KeysUnavailable("the router cannot fetch the control plane's keys yet")
        return verify_tunnel(token, self._keys, hostname=hostname, issuer=self._issuer,
                             leeway=self._leeway)
