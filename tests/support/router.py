"""A router, listener links and tokens wired together on loopback, for tests and the bench.

The one place where the router and the listener meet in code: neither runtime package imports
the other.

Everything is real (sockets, WebSockets, signatures); only the JWKS comes from memory instead of
the control plane's HTTP endpoint.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import aiohttp
from aiohttp import web

from edge_router.config import RouterConfig
from edge_router.server import Router
from helpers.listener.links import RouterLink, StreamServer
from helpers.listener.links import session as link_session
from helpers.listener.tokens import TunnelToken
from protocol.tokens import SigningKey, tunnel_claims
from protocol.tunnel import TUNNEL_PATH

DOMAIN = "dit4c.test"
ISSUER = "dit4c-test"


def config(**overrides: Any) -> RouterConfig:
    base = RouterConfig(domain=DOMAIN, jwks_url="memory:", listen=(("127.0.0.1", 0),),
                        router_id="test-router", token_issuer=ISSUER)
    return dataclasses.replace(base, **overrides)


def jwks_of(*keys: SigningKey) -> Any:
    async def fetch() -> dict[str, Any]:
        return {"keys": [key.public_jwk() for key in keys]}
    return fetch


async def start_router(key: SigningKey, *, sqs: Any = None, **overrides: Any) -> Router:
    router = Router(config(**overrides), fetch_jwks=jwks_of(key), sqs=sqs)
    await router.start()
    return router


def token(key: SigningKey, instance_id: str, *, hostname: str | None = None,
          **claims: Any) -> str:
    body = tunnel_claims(issuer=ISSUER, instance_id=instance_id,
                         hostname=hostname or f"{instance_id}.{DOMAIN}")
    body.update(claims)
    return key.sign(body)


def tunnel_url(router: Router) -> str:
    host, port = router.addresses[0]
    return f"ws://{host}:{port}{TUNNEL_PATH}"


class Links:
    """Listener links (the pod side) run as tasks, all stopped by :meth:`close`."""

    def __init__(self) -> None:
        self.session: aiohttp.ClientSession | None = None
        self.tasks: list[asyncio.Task[None]] = []

    async def start(self, urls: list[str], *, token: str | TunnelToken, hostname: str,
                    upstream: tuple[str, int] | StreamServer, wait: bool = True
                    ) -> list[RouterLink]:
        if self.session is None:
            self.session = link_session()
        links = [RouterLink(self.session, url, token=token, hostname=hostname,
                            upstream=upstream) for url in urls]
        self.tasks += [asyncio.ensure_future(link.run()) for link in links]
        if wait:
            await asyncio.wait_for(
                asyncio.gather(*(link.connected.wait() for link in links)), 10)
        return links

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.session is not None:
            await self.session.close()


# --- an upstream standing in for the pod's auth helper ------------------------------------

CHUNK = 256 * 1024


def upstream_app() -> web.Application:
    """``/`` hello, ``/headers`` the request headers as JSON, ``/echo`` streams the body back,
    ``/bytes/{n}`` streams n bytes, ``/ws`` a WebSocket echo, ``/sleep/{s}`` answers late."""
    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="hello from the tool\n")

    async def headers(request: web.Request) -> web.Response:
        return web.json_response({k: v for k, v in request.headers.items()})

    async def echo(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        async for chunk in request.content.iter_chunked(CHUNK):
            await response.write(chunk)
        await response.write_eof()
        return response

    async def sized(request: web.Request) -> web.StreamResponse:
        size = int(request.match_info["n"])
        response = web.StreamResponse(headers={"Content-Length": str(size)})
        await response.prepare(request)
        block = b"x" * CHUNK
        while size > 0:
            await response.write(block[:min(size, CHUNK)])
            size -= CHUNK
        await response.write_eof()
        return response

    async def ws_echo(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for message in ws:
            if message.type == aiohttp.WSMsgType.TEXT:
                await ws.send_str(message.data)
            elif message.type == aiohttp.WSMsgType.BINARY:
                await ws.send_bytes(message.data)
        return ws

    async def sleep(request: web.Request) -> web.Response:
        await asyncio.sleep(float(request.match_info["s"]))
        return web.Response(text="slept\n")

    app = web.Application(client_max_size=1024 ** 3)
    app.router.add_get("/", hello)
    app.router.add_get("/headers", headers)
    app.router.add_post("/echo", echo)
    app.router.add_put("/echo", echo)
    app.router.add_get("/bytes/{n}", sized)
    app.router.add_get("/ws", ws_echo)
    app.router.add_get("/sleep/{s}", sleep)
    return app
