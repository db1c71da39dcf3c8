"""The auth helper's front door on ``DIT4C_AUTH_LISTEN``: signed-in requests go straight through.

Every connection from the listener arrives here. Each request head is parsed once
(:mod:`protocol.http1`). A request that carries a live session cookie (its token not yet due
for renewal) for any path outside ``/.dit4c/`` goes to the tool as bytes: the helper's cookies
are taken out of ``Cookie``, ``X-Forwarded-Proto``/``-Host`` are set, the tool's response head
loses any ``Set-Cookie`` for the helper's cookie names, and bodies move unchanged in both
directions. A WebSocket becomes a byte pipe after the tool's ``101``; if the session ends
(logout, revocation, a refused renewal) the browser gets a close frame (1008) at the next frame
boundary and both connections close.

Everything else — no session, sign-in, callback, logout, back-channel revocation, a token due
for renewal, a WebSocket or unsafe method from another origin (:mod:`helpers.auth.origins`) —
goes as bytes, unchanged, to the helper's aiohttp application (:mod:`helpers.auth.app`) on a
private Unix socket, which decides and answers as it always did
(and proxies to the tool itself after a renewal). The application stays the one place where
access is decided; the gate only recognises, in memory, a session the application made.

One client connection has one upstream connection at a time (the tool or the application); a
request for the other waits until the responses before it are complete. The tool's socket is
acknowledged on every read (:func:`protocol.tcp.quick_ack`).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from helpers.auth.origins import foreign, origin_of
from helpers.auth.proxy import WebSocketLink, sets_cookie, strip_cookies
from protocol import http1
from protocol.errors import HttpError
from protocol.tcp import quick_ack

if TYPE_CHECKING:
    from helpers.auth.app import AuthHelper
    from helpers.auth.sessions import Session

log = logging.getLogger("dit4c.auth.gate")

MAX_HEAD = 64 * 1024
OWN_PREFIX = b"/.dit4c/"
"""Paths the helper answers itself (pod.CALLBACK_PATH, LOGOUT_PATH, REVOKE_PATH): never the
tool's, always the application's."""
CLOSE_POLICY = 1008
CLOSING_TIMEOUT = 5.0
"""After our close frame, how long the browser has to answer with its own (RFC 6455 7.1.1)."""

# Request side states.
HEAD, BODY, WAIT, UPGRADING, UPGRADED, CLOSING, CLOSED = range(7)
# Response side states.
R_HEAD, R_BODY, R_UNTIL_CLOSE, R_RAW = range(4)


@dataclass(slots=True)
class Pending:
    """A request whose response is not complete yet."""

    method: bytes
    upgrade: bytes | None
    close: bool
    session: Session | None
    """Set when the request went to the tool on this session's strength."""
    answered: bool = False


class Gate:
    """What every connection shares: the helper (sessions, cookie names, settings), the tool's
    address and the application's socket."""

    def __init__(self, helper: AuthHelper, app_socket: str) -> None:
        self.helper = helper
        self.app_socket = app_socket
        self.scheme = b"https" if helper.config.secure else b"http"
        self.own_cookies = frozenset(helper.own_cookies)
        self.session_cookie = helper.session_cookie.encode() + b"="
        self.own_origin = origin_of(helper.config.origin)
        scheme, _, address = helper.config.upstream.partition("://")
        host, _, port = address.rpartition(":")
        self.tool: tuple[str, int] | None = None
        if scheme == "http":  # an https tool is left to the application's client
            self.tool = (host.strip("[]"), int(port) if port.isdigit() else 80)

    def connection(self) -> GateConnection:
        return GateConnection(self)

    def session_for(self, head: http1.RequestHead) -> Session | None:
        """The live session this request may use the fast path with, else None (the
        application then decides: sign-in, renewal, or a refusal of a foreign origin)."""
        if self.tool is None or head.target.startswith(OWN_PREFIX):
            return None
        session_id: str | None = None
        origin: bytes | None = None
        fetch_site: bytes | None = None
        for name, value in head.headers:
            lower = name.lower()
            if lower == b"cookie" and session_id is None:
                session_id = _cookie(value, self.session_cookie)
            elif lower == b"origin":
                origin = value
            elif lower == b"sec-fetch-site":
                fetch_site = value
        if session_id is None:
            return None
        if foreign(head.method.decode("latin-1"), upgrade=head.upgrade is not None,
                   origin=None if origin is None else origin.decode("latin-1"),
                   fetch_site=None if fetch_site is None else fetch_site.decode("latin-1"),
                   own_origin=self.own_origin):
            return None
        session = self.helper.sessions.get(session_id)
        if session is not None and self.helper.clock() < session.renew_at():
            return session
        return None

    def tool_head(self, head: http1.RequestHead) -> bytes:
        lines = [b"%s %s %s" % (head.method, head.target, head.version)]
        for name, value in head.headers:
            if name.lower() == b"cookie":
                kept = strip_cookies(value.decode("latin-1"), self.own_cookies)
                if kept:
                    lines.append(b"%s: %s" % (name, kept.encode("latin-1")))
                continue
            lines.append(b"%s: %s" % (name, value))
        if head.upgrade is not None:
            lines += [b"Connection: upgrade", b"Upgrade: " + head.upgrade]
        elif head.close:
            lines.append(b"Connection: close")
        if head.forwarded_for is not None:
            lines.append(b"X-Forwarded-For: " + head.forwarded_for)
        lines += [b"X-Forwarded-Proto: " + self.scheme, b"X-Forwarded-Host: " + head.raw_host]
        return b"\r\n".join(lines) + b"\r\n\r\n"

    def tool_response_head(self, head: bytes) -> bytes:
        """The tool's response head without ``Set-Cookie`` for one of the helper's cookies."""
        if b"dit4c-" not in head:  # every helper cookie name has it: the common case is free
            return head
        lines = head.split(b"\r\n")
        kept = [line for line in lines if not (
            line[:11].lower() == b"set-cookie:"
            and sets_cookie(line[11:].strip().decode("latin-1"), self.own_cookies))]
        if len(kept) != len(lines):
            log.warning("dropped the tool's Set-Cookie for a helper cookie")
        return b"\r\n".join(kept)


def _cookie(header: bytes, prefix: bytes) -> str | None:
    """The value of the cookie ``prefix`` (``name=``) names in one ``Cookie`` header."""
    for part in header.split(b";"):
        cookie = part.strip()
        if cookie.startswith(prefix):
            return cookie[len(prefix):].strip(b'"').decode("latin-1")
    return None


class Upstream(asyncio.Protocol):
    """One connection to the tool or the application; bytes written before it is up are held."""

    def __init__(self, client: GateConnection, to_tool: bool) -> None:
        self.client = client
        self.to_tool = to_tool
        self.transport: asyncio.Transport | None = None
        self.sock: socket.socket | None = None
        self.held: list[bytes] = []
        self.eof_held = False
        self.closed = False

    def write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)
        elif not self.closed:
            self.held.append(data)

    def write_eof(self) -> None:
        if self.transport is None:
            self.eof_held = True
        elif self.transport.can_write_eof():
            self.transport.write_eof()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if self.closed:
            transport.close()
            return
        if self.to_tool:
            self.sock = transport.get_extra_info("socket")
        held, self.held = self.held, []
        if held:
            transport.write(b"".join(held))
        if self.eof_held:
            self.write_eof()

    def data_received(self, data: bytes) -> None:
        if self.to_tool:
            quick_ack(self.sock)  # before passing it on: the tool's next write may wait for it
        self.client.upstream_data(self, data)

    def eof_received(self) -> bool:
        return False  # the response side is over: close, connection_lost tells the client

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.client.upstream_lost(self, exc)

    def pause_writing(self) -> None:
        self.client.pause_reading()

    def resume_writing(self) -> None:
        self.client.resume_reading()


class FastWebSocket(WebSocketLink):
    """A WebSocket on the fast path, in its session's ``websockets``: ending it sends the
    browser a close frame (1008, the reason) at the next frame boundary and closes both ends."""

    def __init__(self, connection: GateConnection) -> None:
        super().__init__()
        self.connection = connection

    def end(self, reason: str) -> None:
        super().end(reason)
        self.connection.end_websocket(reason)


class FrameBoundary:
    """Follows the WebSocket frames of one direction, to know where one ends and whether a
    close frame has begun."""

    __slots__ = ("close_seen", "header", "remaining")

    def __init__(self) -> None:
        self.remaining = 0
        self.header = b""
        self.close_seen = False

    @property
    def at_boundary(self) -> bool:
        return self.remaining == 0 and not self.header

    def feed(self, data: bytes, *, stop: bool = False) -> int:
        """Follow ``data``. With ``stop``, stop at the first frame end in it and return its
        offset; otherwise (or when no frame ends in it) consume it all and return -1."""
        pos, end = 0, len(data)
        while pos < end:
            if self.remaining:
                take = min(self.remaining, end - pos)
                pos += take
                self.remaining -= take
                if not self.remaining and stop:
                    return pos
                continue
            had = len(self.header)
            combined = self.header + data[pos:pos + 14 - had]
            size, used = _frame_size(combined)
            if size < 0:
                self.header = combined
                return -1
            pos += used - had
            self.header, self.remaining = b"", size
            self.close_seen = self.close_seen or combined[0] & 0x0F == 0x8
            if not size and stop:
                return pos
        return -1


def _frame_size(header: bytes) -> tuple[int, int]:
    """(payload size, header size) of the frame starting ``header``, or (-1, 0) if incomplete."""
    if len(header) < 2:
        return -1, 0
    size, used = header[1] & 0x7F, 2
    if size == 126:
        if len(header) < 4:
            return -1, 0
        size, used = struct.unpack_from("!H", header, 2)[0], 4
    elif size == 127:
        if len(header) < 10:
            return -1, 0
        size, used = struct.unpack_from("!Q", header, 2)[0], 10
    if header[1] & 0x80:
        used += 4
        if len(header) < used:
            return -1, 0
    return size, used


def close_frame(code: int, reason: str) -> bytes:
    payload = struct.pack("!H", code) + reason.encode()[:120]
    return bytes((0x88, len(payload))) + payload


class GateConnection(asyncio.Protocol):
    """One client connection (from the listener, or a browser in the tests)."""

    def __init__(self, gate: Gate) -> None:
        self.gate = gate
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.state = HEAD
        self.body: http1.BodyTracker | None = None
        self.upstream: Upstream | None = None
        self.pending: deque[Pending] = deque()
        self.r_state = R_HEAD
        self.r_buf = b""
        self.r_body: http1.BodyTracker | None = None
        self.r_close = False
        self.reading_paused = False
        self.out: list[bytes] = []
        self.websocket: FastWebSocket | None = None
        self.ws_session: Session | None = None
        self.frames: FrameBoundary | None = None
        """Frames going to the browser (a WebSocket on the fast path)."""
        self.client_frames: FrameBoundary | None = None
        """Frames coming from the browser, to see its answer to our close."""
        self.end_reason: str | None = None

    # --- client side (asyncio.Protocol) -----------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        state = self.state
        if self.client_frames is not None:  # a WebSocket on the fast path
            self.client_frames.feed(data)
            if state == CLOSING:
                if self.client_frames.close_seen:
                    self._close()  # the browser answered our close: the handshake is done
                return
        try:
            if state in (UPGRADED, UPGRADING) or (state == BODY and not self.buf):
                self._forward_body(data)
            elif state != CLOSED:
                self.buf += data
                self._process()
        except HttpError:  # a body's framing (chunk sizes, line ends)
            if len(self.pending) == 1 and not self.pending[0].answered and not self.out:
                self.pending.clear()
                self._fail(400)
            else:
                self._abort()

    def eof_received(self) -> bool:
        if self.state == CLOSING or (self.state == HEAD and not self.buf and not self.pending):
            return False  # a clean close between requests
        if self.upstream is not None:
            self.upstream.write_eof()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.state = CLOSED
        self.transport = None
        self._forget_websocket()
        if self.upstream is not None:
            self.upstream.close()
            self.upstream = None

    def pause_writing(self) -> None:
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.resume_reading()

    def pause_reading(self) -> None:
        if not self.reading_paused and self.transport is not None:
            self.reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.reading_paused and self.transport is not None and self.state != WAIT:
            self.reading_paused = False
            self.transport.resume_reading()

    # --- requests ---------------------------------------------------------------------------

    def _process(self) -> None:
        while self.buf and self.state in (HEAD, BODY):
            if self.state == HEAD:
                if not self._request_head():
                    return
            else:
                assert self.body is not None
                view = memoryview(self.buf)
                end = self.body.advance(view, 0)
                chunk = bytes(view[:end] if end >= 0 else view)
                view.release()
                del self.buf[:len(chunk)]
                if end >= 0:
                    self.state = HEAD
                self._send(chunk)

    def _forward_body(self, data: bytes) -> None:
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
            self.buf += data[end:]
            self._process()

    def _send(self, data: bytes) -> None:
        if self.upstream is not None and data:
            self.upstream.write(data)

    def _request_head(self) -> bool:
        """Handle one complete head in ``buf``; False when more bytes are needed or we stop."""
        end = self.buf.find(b"\r\n\r\n")
        if end < 0 or end > MAX_HEAD:
            if end > MAX_HEAD or len(self.buf) > MAX_HEAD:
                self._fail(431)
            return False
        raw = bytes(self.buf[:end + 4])
        try:
            head = http1.parse_request(raw[:-4])
        except HttpError:
            self._fail(400)
            return False
        session = self.gate.session_for(head)
        to_tool = session is not None
        if self.upstream is not None and self.upstream.to_tool != to_tool:
            if self.pending:
                self.state = WAIT  # until the responses so far are complete
                self.pause_reading()
                return False
            self.upstream.close()
            self.upstream = None
        del self.buf[:end + 4]
        if self.upstream is None:
            self.upstream = self._connect(to_tool)
            self.r_state, self.r_buf = R_HEAD, b""
        self._send(self.gate.tool_head(head) if to_tool else raw)
        self.pending.append(Pending(head.method, head.upgrade, head.close, session))
        if head.upgrade is not None:
            self.state = UPGRADING
            if self.buf:
                rest, self.buf = bytes(self.buf), bytearray()
                self._send(rest)
            return False
        self.body = http1.BodyTracker(head.framing, head.length)
        self.state = HEAD if self.body.done else BODY
        return True

    def _connect(self, to_tool: bool) -> Upstream:
        upstream = Upstream(self, to_tool)
        if to_tool:
            assert self.gate.tool is not None
            host, port = self.gate.tool
            opening = self.loop.create_connection(lambda: upstream, host, port)
        else:
            opening = self.loop.create_unix_connection(lambda: upstream, self.gate.app_socket)
        task = asyncio.ensure_future(opening)
        task.add_done_callback(lambda done: self._connected(upstream, done))
        return upstream

    def _connected(self, upstream: Upstream, done: asyncio.Future[Any]) -> None:
        if done.cancelled() or done.exception() is None:
            return
        log.warning("cannot reach the %s: %s", "tool" if upstream.to_tool else "application",
                    done.exception())
        upstream.closed = True
        self.upstream_lost(upstream, done.exception())

    # --- responses --------------------------------------------------------------------------

    def upstream_data(self, upstream: Upstream, data: bytes) -> None:
        if upstream is not self.upstream or self.transport is None:
            return
        if self.r_state == R_RAW:
            self._raw_to_client(data)
            return
        if self.r_state == R_UNTIL_CLOSE:
            self.out.append(data)
        else:
            try:
                self._responses(memoryview(data))
            except HttpError as exc:
                log.warning("bad response from the %s: %s",
                            "tool" if upstream.to_tool else "application", exc)
                self.out.clear()
                self._upstream_failed()
                return
        self._flush()

    def _responses(self, data: memoryview) -> None:
        pos, end = 0, len(data)
        while pos < end and self.state != CLOSED:
            if self.r_state == R_HEAD:
                if not self.pending:
                    raise HttpError("response without a request")
                earlier = len(self.r_buf)
                self.r_buf += bytes(data[pos:pos + MAX_HEAD + 4 - earlier])
                head_end = self.r_buf.find(b"\r\n\r\n", max(0, earlier - 3))
                if head_end < 0:
                    if len(self.r_buf) > MAX_HEAD:
                        raise HttpError("response head too large")
                    return
                pos += head_end + 4 - earlier
                head_bytes, self.r_buf = self.r_buf[:head_end], b""
                self._response_head(head_bytes)
            elif self.r_state == R_BODY:
                assert self.r_body is not None
                stop = self.r_body.advance(data, pos)
                self.out.append(bytes(data[pos:stop if stop >= 0 else end]))
                if stop < 0:
                    return
                pos = stop
                self._response_done()
            elif self.r_state == R_RAW:
                self._raw_to_client(bytes(data[pos:]))
                return
            else:
                self.out.append(bytes(data[pos:]))
                return

    def _response_head(self, head_bytes: bytes) -> None:
        request = self.pending[0]
        if request.session is not None:
            head_bytes = self.gate.tool_response_head(head_bytes)
        head = http1.parse_response(head_bytes, request_method=request.method,
                                    upgrade=request.upgrade, close=request.close)
        request.answered = True
        self.out.append(head.head)
        if head.status == 101 and request.upgrade is not None:
            self.r_state, self.state = R_RAW, UPGRADED
            if request.session is not None:
                self.frames, self.client_frames = FrameBoundary(), FrameBoundary()
                self.websocket, self.ws_session = FastWebSocket(self), request.session
                request.session.websockets.add(self.websocket)
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
        self.pending.popleft()
        self.r_state, self.r_body = R_HEAD, None
        if self.r_close:
            self._close()
        elif self.state == WAIT and not self.pending:
            self.state = HEAD
            self.resume_reading()
            self._process()

    def _flush(self) -> None:
        if self.out and self.transport is not None:
            out, self.out = self.out, []
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))

    def upstream_lost(self, upstream: Upstream, exc: BaseException | None) -> None:
        if upstream is not self.upstream:
            return
        self.upstream = None
        if self.state in (CLOSING, CLOSED):
            return
        if self.r_state in (R_UNTIL_CLOSE, R_RAW):
            self._flush()
            self._close()
        elif self.pending:
            self._upstream_failed()
        # else: idle keep-alive connection closed by the upstream; the next request opens one

    def _upstream_failed(self) -> None:
        if self.pending and not self.pending[0].answered and not self.out:
            self.pending.clear()
            self._fail(502, text="The tool is not answering (yet). Try again in a moment.\n")
        else:
            self._abort()

    # --- WebSockets on the fast path --------------------------------------------------------

    def _raw_to_client(self, data: bytes) -> None:
        if self.frames is not None:
            if self.end_reason is not None:
                boundary = self.frames.feed(data, stop=True)
                if boundary >= 0:
                    self.out.append(data[:boundary])
                    self._end_now()
                    return
            else:
                self.frames.feed(data)
        self.out.append(data)
        self._flush()

    def end_websocket(self, reason: str) -> None:
        """The session ended: close frame at the next boundary, then close both ends."""
        if self.state in (CLOSING, CLOSED) or self.end_reason is not None:
            return
        self.end_reason = reason
        if self.frames is None or self.frames.at_boundary:
            self._end_now()

    def _end_now(self) -> None:
        """Our close frame to the browser, the tool's connection closed; the browser's close
        frame (or the timeout) then ends the connection (aiohttp and browsers report an
        abnormal closure, 1006, when the server drops the TCP connection first)."""
        self.out.append(close_frame(CLOSE_POLICY, self.end_reason or ""))
        self._flush()
        self.state = CLOSING
        self._forget_websocket()
        if self.upstream is not None:
            self.upstream.close()
            self.upstream = None
        self.loop.call_later(CLOSING_TIMEOUT, self._abort)

    def _forget_websocket(self) -> None:
        if self.websocket is not None and self.ws_session is not None:
            self.ws_session.websockets.discard(self.websocket)
        self.websocket = self.ws_session = None

    # --- ending -----------------------------------------------------------------------------

    def _fail(self, status: int, text: str = "") -> None:
        """Answer with a short page and close (unread request bytes are dropped)."""
        if self.transport is None or self.state == CLOSED:
            return
        reason = {400: b"Bad Request", 431: b"Request Header Fields Too Large",
                  502: b"Bad Gateway"}[status]
        body = (text or reason.decode() + "\n").encode()
        self.transport.write(b"HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\n"
                             b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
                             % (status, reason, len(body), body))
        self._close()

    def _close(self) -> None:
        self._flush()
        self.state = CLOSED
        self._forget_websocket()
        if self.upstream is not None:
            self.upstream.close()
            self.upstream = None
        if self.transport is not None:
            self.transport.close()

    def _abort(self) -> None:
        if self.state == CLOSED and self.transport is None:
            return
        self.state = CLOSED
        self._forget_websocket()
        if self.upstream is not None:
            self.upstream.close()
            self.upstream = None
        if self.transport is not None:
            self.transport.abort()

