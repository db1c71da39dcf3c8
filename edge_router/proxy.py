"""The public side: one :class:`ClientConnection` per browser connection.

Each request head is parsed once here (route by ``Host``, drop hop-by-hop headers, set
``X-Forwarded-*``); bodies in both directions are only scanned for their end and then move as
bytes over the instance's tunnel stream. One client connection maps to one stream (and, in the
pod, one upstream connection) for as long as its requests go to the same host; a request for
another host waits until the earlier responses are complete and then gets a stream of its own,
so bytes of one instance's connection never reach another instance.

A request for ``TUNNEL_PATH`` on a host that is not an instance is handed, bytes and socket, to
the tunnel endpoint (:mod:`edge_router.tunnels`).

A tunnel carries at most ``max_streams`` streams, so nobody may keep them without using them:

- one client (an address; IPv6 by /64, which one subscriber gets) holds at most
  ``max_streams_per_client`` of a tunnel's streams (429 beyond) and at most
  ``max_connections_per_client`` connections to the router (429 and closed beyond);
- a keep-alive connection between requests gives its stream back after
  ``stream_idle_timeout`` and opens a new one with its next request;
- a request body must move at least ``MIN_BODY_RATE`` bytes a second over every
  ``body_timeout`` window (408 otherwise; time the tunnel holds the body back does not count,
  nor waiting for ``100 Continue``): a byte every few minutes no longer holds a stream.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from edge_router.config import RouterConfig
from edge_router.errors import BadRequest
from edge_router.metrics import Stats
from edge_router.pages import error_response
from edge_router.routes import RouteTable, Tunnel
from edge_router.tunnels import TunnelEndpoint
from protocol import http1
from protocol.errors import HttpError
from protocol.tunnel import TUNNEL_PATH, Stream

access_log = logging.getLogger("dit4c.router.access")
log = logging.getLogger("dit4c.router.proxy")

MAX_RESPONSE_HEAD = 64 * 1024
SWEEP_ACTIVITY_SECONDS = 1.0
"""Connections that moved bytes within about this long count as activity at each sweep."""
TUNNEL_TARGET = TUNNEL_PATH.encode()
MIN_BODY_RATE = 500
"""Bytes a second a request body must average over each ``body_timeout`` window (Apache's
mod_reqtimeout default): a slow link passes, a byte every few minutes does not."""

# Request side states.
HEAD, BODY, WAIT_HOST, UPGRADING, UPGRADED, CLOSED = range(6)
# Response side states.
R_HEAD, R_BODY, R_UNTIL_CLOSE, R_RAW = range(4)


@dataclass
class ProxyContext:
    """What every client connection shares."""

    config: RouterConfig
    routes: RouteTable
    stats: Stats
    tunnels: TunnelEndpoint
    """Takes over connections whose request is for the tunnel endpoint."""
    connections: set[ClientConnection] = field(default_factory=set)
    client_connections: dict[str, int] = field(default_factory=dict)
    """Open public connections by :func:`client_key`."""

    def sweep(self, now: float) -> None:
        """Enforce timeouts and tunnel heartbeats; called about once a second."""
        for connection in list(self.connections):
            connection.check_timeouts(now)
        self.tunnels.check(now)

    def close_all(self) -> None:
        """Shutting down: drop every client connection (their streams end with them)."""
        for connection in list(self.connections):
            connection._abort()


def client_key(address: str) -> str:
    """Who counts as one client: an IPv4 address, or an IPv6 /64 (a subscriber's prefix: one
    host can take any address in it)."""
    if ":" not in address:
        return address  # IPv4 (the common case, no parsing)
    try:
        ip = ipaddress.IPv6Address(address.split("%", 1)[0])
    except ValueError:
        return address
    if ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ipaddress.IPv6Network((ip, 64), strict=False))


@dataclass(slots=True)
class Pending:
    """A request whose response is not complete yet."""

    method: bytes
    target: bytes
    host: str
    instance_id: str
    upgrade: bytes | None
    close: bool
    started: float
    status: int = 0
    bytes_out: int = 0
    expect_continue: bool = False


class ClientConnection(asyncio.Protocol):
    """One public client connection (HTTP or HTTPS)."""

    def __init__(self, ctx: ProxyContext, scheme: bytes) -> None:
        self.ctx = ctx
        self.scheme = scheme
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.client_ip = "-"
        self.client = "-"
        """:func:`client_key` of ``client_ip``: what the per-client limits count."""
        self.received = 0
        self.body_mark = (0.0, 0)
        """(when, ``received`` then): the start of the current body-rate window."""
        self.buf = bytearray()
        self.state = HEAD
        self.body: http1.BodyTracker | None = None
        self.stream: Stream | None = None
        self.tunnel: Tunnel | None = None
        self.host = ""
        self.instance_id = ""
        self.pending: deque[Pending] = deque()
        self.r_state = R_HEAD
        self.r_buf = b""
        self.r_body: http1.BodyTracker | None = None
        self.r_close = False
        self.reading_paused = False
        self.credit_paused = False
        self.write_paused = False
        self.unacked = 0
        self.out: list[bytes | memoryview] = []
        self.flush_scheduled = False
        self.last_active = time.monotonic()
        self.head_started = 0.0

    # --- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.client_ip = peer[0] if peer else "-"
        self.client = client_key(self.client_ip)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.ctx.connections.add(self)
        self.ctx.stats.connections += 1
        counts = self.ctx.client_connections
        counts[self.client] = counts.get(self.client, 0) + 1
        if counts[self.client] > self.ctx.config.max_connections_per_client:
            self._fail(429, text="Too many connections from your address.")

    def _uncount(self) -> None:
        """This connection no longer counts against its client (closed, or a tunnel now)."""
        if self.client == "-":
            return
        counts = self.ctx.client_connections
        left = counts.get(self.client, 1) - 1
        if left > 0:
            counts[self.client] = left
        else:
            counts.pop(self.client, None)
        self.client = "-"

    def connection_lost(self, exc: Exception | None) -> None:
        self.ctx.connections.discard(self)
        self._drop_stream("client disconnected")
        self._uncount()
        self.state = CLOSED
        self.transport = None
        self.out.clear()
        for request in self.pending:
            self._log(request, request.status or 499)
        self.pending.clear()

    def data_received(self, data: bytes) -> None:
        self.last_active = time.monotonic()
        self.ctx.stats.bytes_in += len(data)
        self.received += len(data)
        state = self.state
        try:
            if state in (UPGRADED, UPGRADING) or (state == BODY and not self.buf):
                self._forward_body(data)
                return
            if state == CLOSED:
                return
            if state == HEAD and not self.buf:
                self.head_started = self.last_active
            self.buf += data
            self._process()
        except HttpError as exc:  # a body's framing (chunk sizes, line ends)
            log.info("malformed request body from %s: %s", self.client_ip, exc)
            if len(self.pending) == 1 and not self.pending[0].status:
                self._fail(400, self.pending.popleft())
            else:  # an earlier response is under way: a 400 now would be read as its end
                self._abort()

    def eof_received(self) -> bool:
        if self.state == HEAD and not self.buf and not self.pending:
            return False  # a clean close between requests
        if self.stream is not None:
            self.stream.write_eof()
        return True

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.unacked and self.stream is not None:
            self.stream.consumed(self.unacked)
        self.unacked = 0

    # --- requests --------------------------------------------------------------------------

    def _process(self) -> None:
        while self.buf and self.state in (HEAD, BODY):
            if self.state == HEAD:
                if not self._request_head():
                    return
            else:
                view = memoryview(self.buf)
                assert self.body is not None
                end = self.body.advance(view, 0)
                chunk = bytes(view[:end] if end >= 0 else view)
                view.release()
                del self.buf[:len(chunk)]
                if end >= 0:
                    self.state = HEAD
                self._send(chunk)
        if self.state == HEAD and self.buf:
            self.head_started = self.last_active

    def _forward_body(self, data: bytes) -> None:
        """Body bytes with nothing buffered (the common, bulk case): no copy unless the body
        ends inside ``data``."""
        if self.state in (UPGRADED, UPGRADING):
            self._send(data)
            return
        assert self.body is not None
        end = self.body.advance(memoryview(data), 0)
        if end < 0:
            self._send(data)
            return
        self.state = HEAD
        self._send(data[:end])
        if end < len(data):
            self.head_started = self.last_active
            self.buf += data[end:]
            self._process()

    def _send(self, data: bytes) -> None:
        if self.stream is not None and data and not self.stream.write(data):
            self.credit_paused = True
            self._pause_reading()

    def _request_head(self) -> bool:  # noqa: PLR0911, PLR0912 - one exit per outcome
        """Handle one complete head in ``buf``; False when more bytes are needed or we stop."""
        cfg = self.ctx.config
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buf) > cfg.max_header_bytes:
                self._fail(431)
            return False
        if end > cfg.max_header_bytes:
            self._fail(431)
            return False
        try:
            head = http1.parse_request(bytes(self.buf[:end]))
        except HttpError:
            self._fail(400)
            return False
        instance_id = self.ctx.routes.instance_id(head.host)
        if instance_id is None:
            if (head.target.split(b"?", 1)[0] == TUNNEL_TARGET and self.stream is None
                    and not self.pending):
                self._hand_over(head, end + 4)
            else:
                self._fail(404)
            return False
        if self.stream is not None and head.host != self.host:
            if self.pending:
                self.state = WAIT_HOST
                self._pause_reading()
                return False
            self._drop_stream("client moved to another host")
        del self.buf[:end + 4]
        first = head.encode(self.client_ip, self.scheme)
        request = Pending(head.method, head.target, head.host, instance_id, head.upgrade,
                          head.close, time.monotonic())
        if self.stream is None:
            if not self._open_stream(head.host, first, request):
                return False
        else:
            self._send(first)
        self.pending.append(request)
        if head.upgrade is not None:
            self.state = UPGRADING
            if self.buf:
                rest, self.buf = bytes(self.buf), bytearray()
                self._send(rest)
            return False
        self.body = http1.BodyTracker(head.framing, head.length)
        self.state = HEAD if self.body.done else BODY
        if self.state == BODY:
            self.body_mark = (self.last_active, self.received - len(self.buf))
            request.expect_continue = any(
                name.lower() == b"expect" and value.lower() == b"100-continue"
                for name, value in head.headers)
        return True

    def _open_stream(self, host: str, first: bytes, request: Pending) -> bool:
        tunnel = self.ctx.routes.lookup(host)
        if tunnel is None:
            self._fail(503 if self.ctx.routes.known(host) else 404, request)
            return False
        held = tunnel.client_streams.get(self.client, 0)
        if held >= self.ctx.config.max_streams_per_client:
            self._fail(429, request, text="Too many open connections to this instance from "
                                          "your address.")
            return False
        stream = tunnel.mux.open(self, first)
        if stream is None:
            self._fail(503, request, text="The instance has too many open connections.")
            return False
        tunnel.client_streams[self.client] = held + 1
        self.ctx.stats.streams_opened += 1
        self.stream, self.tunnel, self.host = stream, tunnel, host
        self.instance_id = request.instance_id
        self.r_state, self.r_buf = R_HEAD, b""
        return True

    def _drop_stream(self, reason: str | None) -> None:
        """Let go of the stream (telling the peer ``reason``; None: the peer ended it)."""
        stream, self.stream = self.stream, None
        if stream is None:
            return
        if reason is not None:
            stream.close(reason)
        tunnel = self.tunnel
        if tunnel is not None:
            left = tunnel.client_streams.get(self.client, 1) - 1
            if left > 0:
                tunnel.client_streams[self.client] = left
            else:
                tunnel.client_streams.pop(self.client, None)

    def _hand_over(self, head: http1.RequestHead, head_size: int) -> None:
        """Give this socket, and the bytes after the head, to the tunnel endpoint."""
        assert self.transport is not None
        self.ctx.connections.discard(self)
        self._uncount()
        self.state = CLOSED
        leftover, self.buf = bytes(self.buf[head_size:]), bytearray()
        transport, self.transport = self.transport, None
        self.ctx.tunnels.accept(transport, head, leftover, self.client_ip)

    def _pause_reading(self) -> None:
        if not self.reading_paused and self.transport is not None:
            self.reading_paused = True
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self.reading_paused and self.transport is not None and self.state != CLOSED:
            self.reading_paused = False
            self.transport.resume_reading()

    # --- responses (stream Sink) -----------------------------------------------------------

    def stream_data(self, data: memoryview) -> None:
        transport = self.transport
        if transport is None or self.state == CLOSED:
            return
        size = len(data)
        self.last_active = time.monotonic()
        if self.r_state in (R_RAW, R_UNTIL_CLOSE):
            self._write(data)
        else:
            try:
                self._responses(data)
            except HttpError as exc:
                log.warning("bad response from %s: %s", self.host, exc)
                self.out.clear()
                self._upstream_failed(502)
                return
        # Credit goes back once these bytes are in the socket's buffer and it is not backed up
        # (in _flush / resume_writing): the router then holds at most window + high-water.
        self.unacked += size
        self._flush_soon()

    def _write(self, data: bytes | memoryview) -> None:
        """Queue bytes for the client; :meth:`_flush` sends them in one write (one syscall
        for a response's head and body)."""
        self.ctx.stats.bytes_out += len(data)
        if self.pending:
            self.pending[0].bytes_out += len(data)
        self.out.append(data)

    def _flush_soon(self) -> None:
        """Flush once the event loop has handed us every message it read in this round:
        the tunnel brings bulk data as many 32 KiB messages, and one large send is far
        cheaper than many small ones."""
        if (self.out or self.unacked) and not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self.flush_scheduled = False
        out = self.out
        if out and self.transport is not None:
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))
        out.clear()
        if self.unacked and not self.write_paused and self.stream is not None:
            self.stream.consumed(self.unacked)
            self.unacked = 0

    def _responses(self, data: memoryview) -> None:
        pos, end = 0, len(data)
        while pos < end and self.state != CLOSED:
            if self.r_state == R_HEAD:
                if not self.pending:
                    raise BadRequest("response without a request")
                head_end, earlier = self._find_head(data, pos, end)
                if head_end < 0:
                    return
                pos += head_end + 4 - earlier
                head_bytes, self.r_buf = self.r_buf[:head_end], b""
                self._response_head(head_bytes)
            elif self.r_state == R_BODY:
                assert self.r_body is not None
                stop = self.r_body.advance(data, pos)
                self._write(data[pos:stop if stop >= 0 else end])
                if stop < 0:
                    return
                pos = stop
                self._response_done()
            else:
                self._write(data[pos:])
                return

    def _find_head(self, data: memoryview, pos: int, end: int) -> tuple[int, int]:
        """Add the start of ``data[pos:]`` to ``r_buf`` until it holds a whole head: (offset
        of the blank line in ``r_buf`` or -1, bytes ``r_buf`` held before). Copies a few KiB
        at first, never a large body behind a small head."""
        earlier = len(self.r_buf)
        limit = min(end, pos + MAX_RESPONSE_HEAD + 4 - earlier)
        probe = min(limit, pos + 4096)
        self.r_buf += bytes(data[pos:probe])
        head_end = self.r_buf.find(b"\r\n\r\n", max(0, earlier - 3))
        if head_end < 0 and probe < limit:
            self.r_buf += bytes(data[probe:limit])
            head_end = self.r_buf.find(b"\r\n\r\n", max(0, earlier - 3))
        if head_end < 0 and (limit < end or len(self.r_buf) > MAX_RESPONSE_HEAD):
            raise BadRequest("response head too large")
        return head_end, earlier

    def _response_head(self, head_bytes: bytes) -> None:
        request = self.pending[0]
        head = http1.parse_response(head_bytes, request_method=request.method,
                                    upgrade=request.upgrade, close=request.close)
        request.status = head.status
        self._write(head.head)
        if head.status == 101 and request.upgrade is not None:
            self.r_state = R_RAW
            self.state = UPGRADED
            return
        if head.status < 200:
            return  # interim (100 Continue): the final response follows
        if request.upgrade is not None:
            head.close = True  # the client's bytes after a refused upgrade are not HTTP
        self.r_close = head.close
        if head.framing == http1.UNTIL_CLOSE:
            self.r_state = R_UNTIL_CLOSE
            return
        self.r_body = http1.BodyTracker(head.framing, head.length)
        if self.r_body.done:
            self._response_done()
        else:
            self.r_state = R_BODY

    def _response_done(self) -> None:
        request = self.pending.popleft()
        self.r_state, self.r_body = R_HEAD, None
        self._log(request, request.status)
        if self.r_close:
            self._close()
            return
        if self.state == WAIT_HOST and not self.pending:
            self.state = HEAD
            self._resume_reading()
            self._process()

    def _log(self, request: Pending, status: int) -> None:
        now = time.monotonic()
        duration = now - request.started
        self.ctx.stats.observe(status, duration)
        self.ctx.routes.last_activity[request.instance_id] = time.time()
        if self.ctx.config.access_log:
            access_log.info(
                "client=%s host=%s method=%s path=%s status=%d bytes=%d duration_ms=%.1f",
                self.client_ip, request.host, request.method.decode("latin-1"),
                request.target.split(b"?", 1)[0].decode("latin-1"), status,
                request.bytes_out, duration * 1000)

    def stream_eof(self) -> None:
        if self.r_state in (R_UNTIL_CLOSE, R_RAW):
            if self.pending and self.r_state == R_UNTIL_CLOSE:
                request = self.pending.popleft()
                self._log(request, request.status)
            self._close()
        elif self.pending:
            self._upstream_failed(502)
        else:
            self._close()

    def stream_closed(self, reason: str) -> None:
        self._drop_stream(None)
        if self.state == CLOSED:
            return
        if self.pending and self.r_state == R_HEAD and not self.pending[0].status:
            log.info("stream to %s closed before a response: %s", self.host, reason)
            self._upstream_failed(502)
        elif self.r_state in (R_UNTIL_CLOSE, R_RAW) or not self.pending:
            self._close()
        else:
            self._abort()

    def stream_writable(self) -> None:
        if self.credit_paused:
            self.credit_paused = False
            if self.state != WAIT_HOST:
                self._resume_reading()

    # --- ending ----------------------------------------------------------------------------

    def _fail(self, status: int, request: Pending | None = None, *, text: str | None = None
              ) -> None:
        """Answer with one of our pages and close (any unread request bytes are dropped)."""
        if self.transport is None or self.state == CLOSED:
            return
        page = error_response(status, text=text)
        self.ctx.stats.bytes_out += len(page)
        self.transport.write(page)
        if request is not None:
            request.status = status
            self._log(request, status)
        elif self.ctx.config.access_log:
            access_log.info("client=%s status=%d", self.client_ip, status)
        self._close()

    def _upstream_failed(self, status: int) -> None:
        if self.pending and not self.pending[0].status:
            request = self.pending.popleft()
            self._fail(status, request)
        else:
            self._abort()

    def _close(self) -> None:
        self._flush()
        self.state = CLOSED
        self._drop_stream("client connection closed")
        if self.transport is not None:
            self.transport.close()

    def _abort(self) -> None:
        self.state = CLOSED
        self._drop_stream("client connection aborted")
        if self.transport is not None:
            self.transport.abort()

    def check_timeouts(self, now: float) -> None:
        cfg = self.ctx.config
        if self.state == CLOSED:
            return
        if self.pending and now - self.last_active < 2 * SWEEP_ACTIVITY_SECONDS:
            # A WebSocket session or a long transfer is activity too, not only finished
            # requests: a notebook kept open for hours must not look idle to the culler.
            self.ctx.routes.last_activity[self.instance_id] = time.time()
        if self.state == HEAD and not self.pending:
            if self.buf:
                if now - self.head_started > cfg.header_timeout:
                    self._fail(408)
            elif now - self.last_active > cfg.idle_timeout:
                self._close()
            elif self.stream is not None and now - self.last_active > cfg.stream_idle_timeout:
                self._drop_stream("idle keep-alive connection")
        elif self.state == BODY and self._body_too_slow(now):
            self._request_timeout()
        elif now - self.last_active > cfg.read_timeout:
            if self.pending and not self.pending[0].status:
                self._upstream_failed(504)
            else:
                self._abort()


    def _body_too_slow(self, now: float) -> bool:
        """Whether the request body fell below ``MIN_BODY_RATE`` over the last window. Time
        in which we held the body back (no credit) or the client waits for ``100 Continue``
        starts the window again: that slowness is not the client's."""
        since, received = self.body_mark
        request = self.pending[-1] if self.pending else None
        if self.credit_paused or (request is not None and request.expect_continue
                                  and not request.status):
            self.body_mark = (now, self.received)
            return False
        window = self.ctx.config.body_timeout
        if now - since < window:
            return False
        if self.received - received < MIN_BODY_RATE * window:
            return True
        self.body_mark = (now, self.received)
        return False

    def _request_timeout(self) -> None:
        log.info("request body from %s too slow: closed", self.client_ip)
        if len(self.pending) == 1 and not self.pending[0].status:
            self._fail(408, self.pending.popleft(), text="The request body came too slowly.")
        else:
            self._abort()


def client_factory(ctx: ProxyContext, scheme: bytes) -> Callable[[], ClientConnection]:
    def make() -> ClientConnection:
        return ClientConnection(ctx, scheme)
    return make

