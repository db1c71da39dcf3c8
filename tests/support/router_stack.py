"""Fixtures for the router's functional tests: a router, a listener link and an upstream.

Imported by the ``test_router_*`` modules (``from tests.support.router_stack import ...``).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from edge_router.server import Router
from protocol.tokens import SigningKey
from tests.support import router as harness

INSTANCE = "abc123"
HOST = f"{INSTANCE}.{harness.DOMAIN}"


@dataclass
class Stack:
    key: SigningKey
    router: Router
    links: harness.Links
    upstream: tuple[str, int]
    client: aiohttp.ClientSession

    @property
    def base(self) -> str:
        host, port = self.router.addresses[0]
        return f"http://{host}:{port}"

    def router_connections(self) -> list[object]:
        return list(self.router.proxy.connections) if self.router.proxy else []

    async def get(self, path: str, host: str = HOST,
                  headers: dict[str, str] | None = None) -> aiohttp.ClientResponse:
        return await self.client.get(self.base + path, headers={"Host": host, **(headers or {})})


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[str, int]]:
    runner = web.AppRunner(harness.upstream_app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    yield host, port
    await runner.cleanup()


@contextlib.asynccontextmanager
async def serve_stack(upstream: tuple[str, int], *, decompress: bool = True,
                      **router_overrides: Any) -> AsyncIterator[Stack]:
    """A router (``router_overrides`` on its config) with one tunnel for ``HOST`` to
    ``upstream``, and a client; all stopped on leaving."""
    key = SigningKey.generate()
    router = await harness.start_router(key, **router_overrides)
    links = harness.Links()
    client = aiohttp.ClientSession(auto_decompress=decompress)
    try:
        await links.start([harness.tunnel_url(router)], token=harness.token(key, INSTANCE),
                          hostname=HOST, upstream=upstream)
        yield Stack(key, router, links, upstream, client)
    finally:
        await client.close()
        await links.close()
        await router.stop()


@pytest.fixture
async def stack(upstream: tuple[str, int]) -> AsyncIterator[Stack]:
    async with serve_stack(upstream, decompress=False, access_log=True) as made:
        yield made


