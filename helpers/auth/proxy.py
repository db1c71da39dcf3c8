"""Forwarding to the tool: HTTP with streamed bodies both ways, and WebSocket.

The tool sees the request as the browser sent it (method, raw path and query, ``Host``,
``Origin``, its own cookies) minus hop-by-hop headers and minus the helper's own cookies, plus
``X-Forwarded-Proto``/``-Host``. Responses come back byte for byte (no decompression); a
``Set-Cookie`` from the tool for one of the helper's cookie names is dropped, so a tool cannot
overwrite or fixate the helper's session.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Collection

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from protocol.tcp import quick_ack

log = logging.getLogger("dit4c.auth.proxy")

HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
    "trailers", "transfer-encoding", "upgrade",
})
WS_HANDSHAKE = frozenset({
    "sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions",
    "sec-websocket-protocol", "sec-websocket-accept",
})
CHUNK = 1024 * 1024
MAX_WS_MESSAGE = 64 * 1024 * 1024
UPSTREAM_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=10)
"""Connect quickly or fail; after that a tool may stream or long-poll for as long as it likes."""
WS_CONNECT_TIMEOUT = 10.0


def strip_cookies(header: str, names: Collection[str]) -> str:
    """The ``Cookie`` header without the cookies called ``names`` (others kept verbatim)."""
    kept = []
    for part in header.split(";"):
        name = part.split("=", 1)[0].strip()
        if part.strip() and name not in names:
            kept.append(part.strip())
    return "; ".join(kept)


def cookie_value(request: web.BaseRequest, name: str) -> str | None:
    """The value of cookie ``name`` as sent; None when absent (tolerates malformed headers)."""
    for header in request.headers.getall("Cookie", []):
        for part in header.split(";"):
            key, sep, value = part.strip().partition("=")
            if sep and key == name:
                return value.strip().strip('"')
    return None


def _forward_headers(request: web.BaseRequest, cookie_names: Collection[str],
                     scheme: str, *, websocket: bool = False) -> CIMultiDict[str]:
    connection_listed = {
        token.strip().lower()
        for value in request.headers.getall("Connection", [])
        for token in value.split(",")
    }
    headers: CIMultiDict[str] = CIMultiDict()
    for name, value in request.headers.items():
        lower = name.lower()
        if lower in HOP_BY_HOP or lower in connection_listed:
            continue
        if websocket and lower in WS_HANDSHAKE:
            continue  # the client library makes its own handshake
        if lower == "cookie":
            kept = strip_cookies(value, cookie_names)
            if kept:
                headers.add(name, kept)
            continue
        headers.add(name, value)
    headers["X-Forwarded-Proto"] = scheme
    headers["X-Forwarded-Host"] = request.host
    return headers


def _response_headers(upstream: CIMultiDictProxy[str],
                      cookie_names: Collection[str]) -> CIMultiDict[str]:
    connection_listed = {
        token.strip().lower()
        for value in upstream.getall("Connection", [])
        for token in value.split(",")
    }
    headers: CIMultiDict[str] = CIMultiDict()
    for name, value in upstream.items():
        lower = name.lower()
        if lower in HOP_BY_HOP or lower in connection_listed:
            continue
        if lower == "set-cookie" and sets_cookie(value, cookie_names):
            log.warning("dropped the tool's Set-Cookie for a helper cookie")
            continue
        headers.add(name, value)
    return headers


def sets_cookie(value: str, names: Collection[str]) -> bool:
    """Whether a ``Set-Cookie`` value sets one of ``names``, read as browsers read it (RFC
    6265bis 5.7), not as :class:`http.cookies.SimpleCookie` does: that one silently drops a
    cookie it finds malformed (``dit4c-auth=a b``, a stray quote), which browsers store all the
    same. The name is what precedes the first ``=`` of the first ``;``-part, trimmed; a
    nameless cookie (``=dit4c-auth=x``) is sent back as its bare value, ``dit4c-auth=x``, so
    the name inside that value counts too."""
    pair = value.split(";", 1)[0]
    name, sep, rest = pair.partition("=")
    name = name.strip(" \t")
    if not sep:
        return False  # a nameless cookie without "=": it comes back as a bare word
    if name:
        return name in names
    return rest.partition("=")[0].strip(" \t") in names


class Upstream:
    """The tool behind this helper; ``http`` is a session owned by the caller."""

    def __init__(self, http: aiohttp.ClientSession, base_url: str, *, scheme: str,
                 cookie_names: Collection[str]) -> None:
        self._http = http
        self._base = base_url
        self._scheme = scheme
        self._cookie_names = frozenset(cookie_names)

    def _url(self, request: web.BaseRequest) -> URL:
        return URL(self._base + request.raw_path, encoded=True)

    async def forward_http(self, request: web.Request) -> web.StreamResponse:
        headers = _forward_headers(request, self._cookie_names, self._scheme)
        body = request.content if request.body_exists else None
        try:
            upstream = await self._http.request(
                request.method, self._url(request), headers=headers, data=body,
                allow_redirects=False, timeout=UPSTREAM_TIMEOUT,
            )
        except (TimeoutError, aiohttp.ClientError) as exc:
            log.warning("tool unreachable for %s %s: %r", request.method, request.path, exc)
            return web.Response(status=502, text="The tool is not answering (yet). "
                                "Try again in a moment.\n")
        async with upstream:
            _ack_tool(upstream)
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason,
                                          headers=_response_headers(upstream.headers,
                                                                    self._cookie_names))
            await response.prepare(request)
            try:
                if request.method != "HEAD":
                    async for chunk in upstream.content.iter_chunked(CHUNK):
                        _ack_tool(upstream)
                        await response.write(chunk)
                await response.write_eof()
            except (ConnectionError, aiohttp.ClientPayloadError) as exc:
                # Headers are gone already: all we can do is cut the response short.
                log.info("%s %s cut short: %r", request.method, request.path, exc)
                if request.transport is not None:
                    request.transport.close()
            return response

    async def forward_websocket(self, request: web.Request,
                                on_open: set[WebSocketLink]) -> web.StreamResponse:
        """Connect to the tool first, then accept the browser with the protocol the tool chose.

        A :class:`WebSocketLink` is in ``on_open`` while the pair lasts, so that whoever owns
        that set (the session) can end it when access ends.
        """
        headers = _forward_headers(request, self._cookie_names, self._scheme, websocket=True)
        protocols = [
            p.strip() for value in request.headers.getall("Sec-WebSocket-Protocol", [])
            for p in value.split(",") if p.strip()
        ]
        try:
            tool = await asyncio.wait_for(self._http.ws_connect(
                self._url(request), headers=headers, protocols=protocols, autoping=True,
                max_msg_size=MAX_WS_MESSAGE,
            ), WS_CONNECT_TIMEOUT)
        except aiohttp.WSServerHandshakeError as exc:
            return web.Response(status=exc.status if exc.status >= 400 else 502,
                                text=f"The tool refused the WebSocket: {exc.message}\n")
        except (TimeoutError, aiohttp.ClientError) as exc:
            log.warning("tool WebSocket unreachable at %s: %r", request.path, exc)
            return web.Response(status=502, text="The tool is not answering.\n")
        browser = web.WebSocketResponse(protocols=[tool.protocol] if tool.protocol else (),
                                        autoping=True, max_msg_size=MAX_WS_MESSAGE)
        link = WebSocketLink()
        try:
            await browser.prepare(request)
            on_open.add(link)
            ended = await _pump_both(browser, tool, link)
        finally:
            on_open.discard(link)
        # Closed here, after the pumps stopped, so that no close races another.
        if ended:
            await tool.close(code=aiohttp.WSCloseCode.GOING_AWAY)
            await browser.close(code=aiohttp.WSCloseCode.POLICY_VIOLATION,
                                message=link.reason.encode())
        else:
            await tool.close()
            await browser.close()
        return browser


def _ack_tool(upstream: aiohttp.ClientResponse) -> None:
    """Acknowledge what the tool sent at once, before passing it on (protocol/tcp.py)."""
    if upstream.connection is not None and upstream.connection.transport is not None:
        quick_ack(upstream.connection.transport.get_extra_info("socket"))


class WebSocketLink:
    """One proxied WebSocket pair; :meth:`end` makes the proxy close both (browser: 1008)."""

    def __init__(self) -> None:
        self.ended = asyncio.Event()
        self.reason = ""

    def end(self, reason: str) -> None:
        self.reason = reason
        self.ended.set()


async def _pump_both(browser: web.WebSocketResponse, tool: aiohttp.ClientWebSocketResponse,
                     link: WebSocketLink) -> bool:
    """Relay until either side closes (its close code passed on) or the link is ended; True
    when ended."""
    async def pump(source: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
                   sink: web.WebSocketResponse | aiohttp.ClientWebSocketResponse) -> None:
        # Reading the tool: acknowledge each message at once (protocol/tcp.py).
        tool_socket = source.get_extra_info("socket") if source is tool else None
        async for message in source:
            quick_ack(tool_socket)
            if message.type == aiohttp.WSMsgType.TEXT:
                await sink.send_str(message.data)
            elif message.type == aiohttp.WSMsgType.BINARY:
                await sink.send_bytes(message.data)
            elif message.type == aiohttp.WSMsgType.ERROR:
                break
        code = source.close_code or aiohttp.WSCloseCode.OK
        await sink.close(code=code)

    ended = asyncio.ensure_future(link.ended.wait())
    tasks = [asyncio.ensure_future(pump(browser, tool)), asyncio.ensure_future(pump(tool, browser)),
             ended]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        return ended.done() and not ended.cancelled()
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, ConnectionError, RuntimeError):
                await task
