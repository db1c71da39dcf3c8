"""The auth helper's web application: login, callback, logout, and the gate in front of the tool.

Every request goes through :meth:`AuthHelper.handle`:

    CALLBACK_PATH  -> finish a login this browser started, set the session cookie, go back to
                      the page first asked for
    LOGOUT_PATH    -> GET: a page with a sign-out button; POST from this instance's own pages
                      (``Origin``): end the session
    REVOKE_PATH    -> (POST, from the portal, signed) end a user's sessions at once
    anything else  -> with a live session: proxy to the tool (HTTP or WebSocket);
                      without: GET/HEAD go to the portal's authorize endpoint, the rest get 401

A session is live while its access token is; four fifths into the token's life the helper
renews it with the refresh token, which makes the portal check access again. A refusal ends the
session at once: the next page load goes through the portal (which shows its 403 page to a user
who lost access), and the session's open WebSockets are closed by the renewal task.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import logging
import time
from collections.abc import AsyncIterator, Callable
from urllib.parse import urlencode

import aiohttp
from aiohttp import web

from helpers.auth.config import AuthConfig
from helpers.auth.errors import GrantRefused, PortalError
from helpers.auth.origins import foreign, origin_of
from helpers.auth.portal import Portal
from helpers.auth.proxy import Upstream, cookie_value
from helpers.auth.sessions import LOGIN_LIFETIME, Session, SessionStore, new_secret
from protocol import pod
from protocol.errors import TokenError
from protocol.tokens import ALL_USERS, pkce_challenge
from protocol.urls import same_origin_path

log = logging.getLogger("dit4c.auth")

RENEW_TICK = 1.0
"""How often the renewal task looks for sessions with open WebSockets that are due."""
SWEEP_EVERY = 300.0
MAX_REVOKE_BODY = 16 * 1024
READ_BUFFER = 1024 * 1024
"""Bytes buffered per tool response: large downloads move in few, big writes."""


class AuthHelper:
    """Holds the helper's state; ``web_app()`` is the aiohttp application serving it."""

    def __init__(self, config: AuthConfig, *, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock
        self.sessions = SessionStore(clock)
        # __Host- cookies are host-only, path=/ and Secure by browser rule (https only).
        prefix = "__Host-" if config.secure else ""
        self.session_cookie = f"{prefix}dit4c-auth"
        self.login_cookie = f"{prefix}dit4c-login"
        self.own_cookies = frozenset(
            f"{p}{name}" for p in ("", "__Host-") for name in ("dit4c-auth", "dit4c-login"))
        self.own_origin = origin_of(config.origin)
        self._own_paths = {pod.CALLBACK_PATH: self.callback, pod.LOGOUT_PATH: self.logout,
                           pod.REVOKE_PATH: self.revoke}
        self._portal: Portal | None = None
        self._upstream: Upstream | None = None

    # --- application -----------------------------------------------------------------------

    def web_app(self) -> web.Application:
        app = web.Application(client_max_size=1024**3)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        app.cleanup_ctx.append(self._lifetime)
        return app

    async def _lifetime(self, app: web.Application) -> AsyncIterator[None]:
        # Separate sessions: the portal's calls must not queue behind long tool streams.
        portal_http = aiohttp.ClientSession()
        tool_http = aiohttp.ClientSession(
            auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
            connector=aiohttp.TCPConnector(limit=0), read_bufsize=READ_BUFFER,
        )
        c = self.config
        self._portal = Portal(portal_http, instance_id=c.instance_id, issuer=c.issuer,
                              client_id=c.client_id,
                              client_secret=c.client_secret, token_url=c.token_url,
                              jwks_url=c.jwks_url, redirect_uri=c.redirect_uri)
        self._upstream = Upstream(tool_http, c.upstream,
                                  scheme="https" if c.secure else "http",
                                  cookie_names=self.own_cookies)
        renewer = asyncio.ensure_future(self._renew_forever())
        try:
            yield
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer
            for session in self.sessions.all():
                self._close_websockets(session, "helper shutting down")
            await tool_http.close()
            await portal_http.close()

    @property
    def portal(self) -> Portal:
        assert self._portal is not None, "used outside the application's lifetime"
        return self._portal

    @property
    def upstream(self) -> Upstream:
        assert self._upstream is not None, "used outside the application's lifetime"
        return self._upstream

    # --- the gate --------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        own = self._own_paths.get(request.path)
        if own is not None:
            return await own(request)
        session = self.sessions.get(cookie_value(request, self.session_cookie))
        if session is not None and not await self.ensure_fresh(session):
            session = None
        websocket = (request.method == "GET"
                     and request.headers.get("Upgrade", "").lower() == "websocket")
        if session is None:
            if request.method in ("GET", "HEAD") and not websocket:
                return self.start_login(request)
            return _page(401, "Sign-in required", "Open this page in the browser to sign in.")
        if foreign(request.method, upgrade="Upgrade" in request.headers,
                   origin=request.headers.get("Origin"),
                   fetch_site=request.headers.get("Sec-Fetch-Site"),
                   own_origin=self.own_origin):
            log.warning("%s %s from origin %r refused", "WebSocket" if websocket
                        else request.method, request.path, request.headers.get("Origin"))
            return _page(403, "Request from another site refused",
                         "This instance takes changes and WebSocket connections from its own "
                         "pages only.")
        if websocket:
            return await self.upstream.forward_websocket(request, session.websockets)
        return await self.upstream.forward_http(request)

    def start_login(self, request: web.Request) -> web.StreamResponse:
        nonce = cookie_value(request, self.login_cookie) or new_secret()
        login = self.sessions.start_login(nonce, request.raw_path)
        location = self.config.authorize_url + "?" + urlencode({
            "response_type": "code", "client_id": self.config.client_id,
            "redirect_uri": self.config.redirect_uri, "state": login.state,
            "code_challenge": pkce_challenge(login.verifier), "code_challenge_method": "S256",
        })
        response = _redirect(location)
        self._set_cookie(response, self.login_cookie, nonce, max_age=int(LOGIN_LIFETIME))
        return response

    async def callback(self, request: web.Request) -> web.StreamResponse:
        query = request.query
        login = self.sessions.finish_login(query.get("state", ""),
                                           cookie_value(request, self.login_cookie))
        if login is None:
            log.warning("callback with an unknown, used or foreign state refused")
            return _page(400, "Sign-in link expired",
                         "This sign-in was not started here, or was already used. "
                         "<a href='/'>Start again</a>.")
        if "error" in query:
            status = 403 if query["error"] == "access_denied" else 400
            return _page(status, "Access denied" if status == 403 else "Sign-in failed",
                         html.escape(query.get("error_description", query["error"])))
        try:
            tokens = await self.portal.redeem_code(query.get("code", ""), login.verifier)
        except GrantRefused as exc:
            log.warning("portal refused the code: %s", exc)
            return _page(403, "Sign-in refused", html.escape(str(exc)))
        except PortalError as exc:
            log.error("sign-in failed: %s", exc)
            return _page(502, "Portal unavailable", "The portal could not be reached. "
                         "<a href='/'>Try again</a>.")
        except TokenError as exc:
            log.warning("portal token refused: %s", exc)
            return _page(403, "Sign-in refused", html.escape(f"invalid access token: {exc}"))
        old = self.sessions.get(cookie_value(request, self.session_cookie))
        if old is not None:
            await self._end(old, "replaced by a new sign-in")
        session = self.sessions.create(tokens)
        log.info("session started for %s", session.username)
        response = _redirect(same_origin_path(login.next_path))
        self._set_cookie(response, self.session_cookie, session.session_id)
        self._set_cookie(response, self.login_cookie, "", max_age=0)
        return response

    async def logout(self, request: web.Request) -> web.StreamResponse:
        """Only a POST from this instance's own pages signs out. A GET would let any page
        (another instance's, which is same-site and gets the Lax cookie) sign the user out
        with an image; a cross-origin POST is told apart by its ``Origin``."""
        if request.method != "POST":
            return _page(200, "Sign out", f"<form method='post' action='{pod.LOGOUT_PATH}'>"
                         "<button type='submit'>Sign out of this instance</button></form>")
        if request.headers.get("Origin") != self.config.origin:
            log.warning("logout from origin %r refused", request.headers.get("Origin"))
            return _page(403, "Not signed out", "Sign out from this instance's own page. "
                         f"<a href='{pod.LOGOUT_PATH}'>Sign out</a>.")
        session = self.sessions.get(cookie_value(request, self.session_cookie))
        if session is not None:
            log.info("session ended by logout for %s", session.username)
            await self._end(session, "logged out")
        response = _page(200, "Signed out", "You are signed out of this instance. "
                         "<a href='/'>Sign in again</a>.")
        self._set_cookie(response, self.session_cookie, "", max_age=0)
        return response

    async def revoke(self, request: web.Request) -> web.StreamResponse:
        """Back-channel from the portal: end the sessions of the user a signed token names."""
        if request.method != "POST":
            return web.json_response({"error": "POST a revocation token"}, status=405)
        token = ""
        auth = request.headers.get("Authorization", "")
        if auth.lower().startswith("bearer "):
            token = auth[7:].strip()
        elif request.content_length is not None and request.content_length <= MAX_REVOKE_BODY:
            token = (await request.post()).get("token", "")  # type: ignore[assignment]
        try:
            if not isinstance(token, str) or not token:
                raise TokenError("no revocation token")
            claims = await self.portal.verify_revocation(token)
        except TokenError as exc:
            log.warning("revocation refused: %s", exc)
            return web.json_response({"error": str(exc)}, status=403)
        except PortalError as exc:
            log.error("revocation not checked: %s", exc)
            return web.json_response({"error": "portal unavailable"}, status=502)
        ended = [s for s in self.sessions.all()
                 if claims["sub"] in (ALL_USERS, s.username)]
        for session in ended:
            await self._end(session, "access revoked")
        log.info("revocation for %s ended %d session(s)", claims["sub"], len(ended))
        return web.json_response({"ended": len(ended)})

    # --- sessions --------------------------------------------------------------------------

    async def ensure_fresh(self, session: Session) -> bool:
        """True when the session may be used now, renewing its token first when due."""
        if self.clock() < session.renew_at():
            return True
        async with session.lock:
            if self.clock() < session.renew_at():
                return True  # renewed by another request while we waited
            return await self._renew(session)

    async def _renew(self, session: Session) -> bool:
        refresh = session.tokens.refresh_token
        try:
            if refresh is None:
                raise GrantRefused("no_refresh_token", "the portal gave no refresh token")
            session.tokens = await self.portal.refresh(refresh)
        except (GrantRefused, TokenError) as exc:
            if refresh is None and self.clock() < session.tokens.expires_at:
                return True
            log.info("session of %s ended: renewal refused: %s", session.username, exc)
            await self._end(session, "access ended")
            return False
        except PortalError as exc:
            # The portal is down: keep serving while the token lasts, then stop.
            log.warning("renewal failed, will retry: %s", exc)
            return self.clock() < session.tokens.expires_at
        return True

    async def _end(self, session: Session, reason: str) -> None:
        self.sessions.drop(session)
        self._close_websockets(session, reason)

    @staticmethod
    def _close_websockets(session: Session, reason: str) -> None:
        for link in list(session.websockets):
            link.end(reason)

    async def _renew_forever(self) -> None:
        """Sessions with open WebSockets get no requests to renew them: renew them here."""
        last_sweep = self.clock()
        while True:
            await asyncio.sleep(RENEW_TICK)
            for session in self.sessions.all():
                if session.websockets and self.clock() >= session.renew_at():
                    try:
                        if not await self.ensure_fresh(session):
                            await self._end(session, "access ended")
                    except Exception:
                        log.exception("renewing the session of %s failed", session.username)
            if self.clock() - last_sweep > SWEEP_EVERY:
                self.sessions.sweep()
                last_sweep = self.clock()

    def _set_cookie(self, response: web.StreamResponse, name: str, value: str,
                    max_age: int | None = None) -> None:
        # No Domain attribute: the cookie is for this instance's host only.
        response.set_cookie(name, value, path="/", httponly=True, samesite="Lax",
                            secure=self.config.secure or None, max_age=max_age)




def _redirect(location: str) -> web.Response:
    # Returned, not raised: the caller adds cookies first.
    return web.Response(status=302, headers={"Location": location, "Cache-Control": "no-store"})


def _page(status: int, title: str, body_html: str) -> web.Response:
    return web.Response(
        status=status, content_type="text/html", charset="utf-8",
        headers={"Cache-Control": "no-store"},
        text=(f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title></head>"
              f"<body><h1>{title}</h1><p>{body_html}</p></body></html>\n"),
    )
