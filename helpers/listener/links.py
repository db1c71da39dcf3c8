"""One :class:`RouterLink` per edge router: keep a tunnel up, forever, with backoff and jitter."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable

import aiohttp

from helpers.listener.streams import StreamTransport
from helpers.listener.tokens import TunnelToken
from helpers.listener.upstream import UpstreamConnection
from protocol.tunnel import (
    DEFAULT_WINDOW,
    HOST_HEADER,
    MAX_DATA_TO_ROUTER,
    MAX_MESSAGE_BYTES,
    Mux,
    serve,
)

log = logging.getLogger("dit4c.listener")

BACKOFF_BASE = 0.25
BACKOFF_CAP = 10.0
REFUSED_CAP = 60.0
"""A refused token (401/403) is retried, slowly: the control plane may re-issue it."""
STABLE_AFTER = 10.0
"""A tunnel that lived this long resets the backoff."""
HEARTBEAT = 15.0
CONNECT_TIMEOUT = 10.0
"""For the session the links share (see :func:`session`)."""


def session() -> aiohttp.ClientSession:
    """A client session whose handshakes time out (``timeout=`` of ws_connect differs between
    aiohttp 3.8 and later, the session's ClientTimeout does not)."""
    return aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=None, connect=CONNECT_TIMEOUT,
                                      sock_connect=CONNECT_TIMEOUT))


def backoff(attempt: int, cap: float = BACKOFF_CAP,
            rand: Callable[[float, float], float] = random.uniform) -> float:
    """Exponential backoff with jitter: half to all of ``base * 2**attempt``, at most ``cap``."""
    ceiling = min(cap, BACKOFF_BASE * (2 ** min(attempt, 16)))
    return rand(ceiling / 2, ceiling)


StreamServer = Callable[[], asyncio.Protocol]
"""Makes the protocol that serves one stream in this process (the auth gate's connection)."""


class RouterLink:
    """Holds a tunnel to one router's ``url`` and serves its streams: each to a TCP connection
    to ``upstream`` (``(host, port)``), or in-process to a protocol ``upstream()`` makes
    (:mod:`helpers.listener.streams`)."""

    def __init__(self, session: aiohttp.ClientSession, url: str, *, token: str | TunnelToken,
                 hostname: str, upstream: tuple[str, int] | StreamServer,
                 window: int = DEFAULT_WINDOW, heartbeat: float = HEARTBEAT) -> None:
        self.session = session
        self.url = url
        self.token = token if isinstance(token, TunnelToken) else TunnelToken(token)
        self.hostname = hostname
        self.upstream = upstream
        self.window = window
        self.heartbeat = heartbeat
        self.connected = asyncio.Event()
        self._connects: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        attempt = 0
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            cap = BACKOFF_CAP
            try:
                await self._serve_once()
            except aiohttp.WSServerHandshakeError as exc:
                log.warning("%s refused the tunnel for %s: %s %s", self.url, self.hostname,
                            exc.status, exc.message)
                if exc.status in (401, 403):
                    cap = REFUSED_CAP
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                log.warning("cannot hold the tunnel to %s: %r", self.url, exc)
            finally:
                self.connected.clear()
            if loop.time() - started > STABLE_AFTER:
                attempt = 0
            delay = backoff(attempt, cap)
            attempt += 1
            await asyncio.sleep(delay)

    async def _serve_once(self) -> None:
        dialled_with = self.token.value
        headers = {"Authorization": f"Bearer {dialled_with}", HOST_HEADER: self.hostname}
        async with self.session.ws_connect(
            self.url, headers=headers, heartbeat=self.heartbeat, autoping=True,
            max_msg_size=MAX_MESSAGE_BYTES, compress=0,
        ) as ws:
            mux = Mux(window=self.window, max_data=MAX_DATA_TO_ROUTER)
            mux.on_open = self._opener(mux)
            log.info("tunnel to %s up for %s", self.url, self.hostname)
            self.connected.set()
            unsubscribe = self.token.subscribe(mux.send_token)
            if self.token.value != dialled_with:  # renewed while we dialled
                mux.send_token(self.token.value)
            try:
                reason = await serve(ws, mux)
            finally:
                unsubscribe()
                for task in list(self._connects):
                    task.cancel()
            log.info("tunnel to %s down: %s", self.url, reason)

    def _opener(self, mux: Mux) -> Callable[[int, memoryview], None]:
        if callable(self.upstream):
            serve = self.upstream

            def serve_here(stream_id: int, first: memoryview) -> None:
                transport = StreamTransport(serve())
                transport.attach(mux.accept(stream_id, transport), first)

            return serve_here
        host, port = self.upstream

        def on_open(stream_id: int, first: memoryview) -> None:
            upstream = UpstreamConnection()
            stream = mux.accept(stream_id, upstream)
            upstream.stream = stream
            if first:
                upstream.stream_data(first)
            task = asyncio.ensure_future(upstream.connect(host, port))
            self._connects.add(task)
            task.add_done_callback(self._connects.discard)

        return on_open
