"""The listener's tunnel token, renewed while it runs.

Tunnel tokens live at most an hour (``protocol.tokens.TUNNEL_TOKEN_MAX_LIFETIME``) and the
router ends a tunnel whose token expired. The node daemon renews the token through the portal
and hands it over with ``python3 -m helpers.listener renew`` (:func:`write`), which replaces the
token file; the listener polls the file (:meth:`TunnelToken.watch`: one ``stat`` every few
seconds), dials with the newest token from then on, and sends it over every tunnel that is up
(``protocol.tunnel.TOKEN``), so a long-running tunnel outlives its first token without
dropping a stream.
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
from collections.abc import Callable

log = logging.getLogger("dit4c.listener.tokens")

POLL_SECONDS = 2.0


class TunnelToken:
    """The current token (``value``); ``path``: the file renewed ones arrive in (or None)."""

    def __init__(self, token: str, path: str | None = None) -> None:
        self.value = token
        self.path = path
        self._seen: tuple[int, int] | None = None
        self._subscribers: list[Callable[[str], None]] = []

    def subscribe(self, send: Callable[[str], None]) -> Callable[[], None]:
        """Call ``send(token)`` with every renewed token; returns the unsubscribe."""
        self._subscribers.append(send)
        return lambda: self._subscribers.remove(send)

    def poll(self) -> bool:
        """Take a renewed token from the file if it changed; True if there was one."""
        if self.path is None:
            return False
        try:
            stat = os.stat(self.path)
            seen = (stat.st_mtime_ns, stat.st_size)
            if seen == self._seen:
                return False
            with open(self.path, encoding="ascii") as file:
                token = file.read().strip()
        except (OSError, UnicodeDecodeError):
            return False
        self._seen = seen
        if not token or token == self.value:
            return False
        self.value = token
        log.info("tunnel token renewed")
        for send in list(self._subscribers):
            send(token)
        return True

    async def watch(self, interval: float = POLL_SECONDS) -> None:
        while True:
            self.poll()
            await asyncio.sleep(interval)


def write(path: str, token: str) -> None:
    """Replace the token file at once (a reader never sees half a token)."""
    directory = os.path.dirname(path) or "."
    fd, temporary = tempfile.mkstemp(dir=directory, prefix=".token-")
    try:
        with os.fdopen(fd, "w", encoding="ascii") as file:
            file.write(token)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise
