"""Short-lived STS credentials, fetched from the control plane and refreshed before expiry."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import datetime

from node_daemon.portal import AwsCredentials

log = logging.getLogger("dit4c.node.credentials")

MIN_REFRESH_MARGIN = 30.0
"""Refresh at least this many seconds before expiry: longer than one 20 s long poll."""
MAX_REFRESH_MARGIN = 300.0


class CredentialBroker:
    """Holds the node's current credentials.

    :meth:`current` returns credentials valid for at least the refresh margin, calling
    ``fetch`` when the held ones are missing or too close to expiry. The margin is a quarter of
    the credentials' lifetime, between 30 s and 5 min. Concurrent callers share one fetch; a
    failed fetch raises (the caller backs off) and the next call tries again.
    """

    def __init__(self, fetch: Callable[[], Awaitable[AwsCredentials]],
                 clock: Callable[[], float] = time.time) -> None:
        self._fetch = fetch
        self._clock = clock
        self._held: AwsCredentials | None = None
        self._refresh_at = 0.0
        self._lock = asyncio.Lock()
        self.fetches = 0

    def _fresh(self) -> bool:
        return self._held is not None and self._clock() < self._refresh_at

    async def current(self) -> AwsCredentials:
        if self._fresh():
            assert self._held is not None
            return self._held
        async with self._lock:
            if not self._fresh():
                now = self._clock()
                creds = await self._fetch()
                self.fetches += 1
                expires = _timestamp(creds.expiration)
                lifetime = expires - now
                margin = min(MAX_REFRESH_MARGIN, max(MIN_REFRESH_MARGIN, lifetime / 4))
                self._held = creds
                self._refresh_at = expires - margin
                log.info("credentials fetched key=%s expires_in=%.0fs refresh_in=%.0fs",
                         creds.access_key_id, lifetime, max(0.0, self._refresh_at - now))
            assert self._held is not None
            return self._held


def _timestamp(when: datetime) -> float:
    return when.timestamp()
