"""HTTP helpers for the Chalice routes: JSON bodies, sessions, CSRF, and the error shape.

Sessions: cookie ``dit4c_session`` (HttpOnly, SameSite=Lax, Secure when the portal URL is
https). CSRF: a request that changes state and is authenticated by that cookie must carry the
session's CSRF token (returned by ``POST /api/login`` and ``GET /api/me``) in ``X-CSRF-Token``.
A cross-site page can neither read that token nor set the header without a CORS preflight
(which the API never grants). ``POST /api/login`` itself accepts only ``application/json``,
which a cross-site form cannot send.

Every error leaves as ``{"error": {"code", "message"}}``: :func:`endpoint` converts
:class:`~control_plane.errors.ControlPlaneError`, and :func:`rewrite_framework_errors` (an HTTP
middleware) converts what Chalice itself answers (415, 405, a crash's 500).
"""

from __future__ import annotations

import functools
import hmac
import json
import logging
from collections.abc import Callable
from http.cookies import CookieError, SimpleCookie
from typing import TYPE_CHECKING, Any

from chalice.app import Request, Response

from control_plane.errors import (
    BadRequest,
    ControlPlaneError,
    Forbidden,
    PayloadTooLarge,
    Unauthorized,
)
from control_plane.schema import to_json

if TYPE_CHECKING:
    from control_plane.accounts import Session, User

log = logging.getLogger("dit4c.control_plane.web")

SESSION_COOKIE = "dit4c_session"
CSRF_HEADER = "x-csrf-token"
MAX_BODY_BYTES = 64 * 1024
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
JSON_HEADERS = {"Content-Type": "application/json", "Cache-Control": "no-store"}


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None
                  ) -> Response:
    """``body``: JSON values or a reply dataclass (:mod:`control_plane.replies`)."""
    return Response(body=json.dumps(to_json(body), separators=(",", ":")), status_code=status,
                    headers={**JSON_HEADERS, **(headers or {})})


def error_response(exc: ControlPlaneError) -> Response:
    headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after else {}
    if exc.status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="dit4c"'
    return json_response(exc.to_body(), exc.status, headers)


def body(request: Request) -> dict[str, Any]:
    """The JSON object in the request body (an empty body is an empty object)."""
    raw = request.raw_body or b""
    if len(raw) > MAX_BODY_BYTES:
        raise PayloadTooLarge(f"request body is larger than {MAX_BODY_BYTES} bytes")
    if not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("request body is not valid JSON") from None
    if not isinstance(value, dict):
        raise BadRequest("request body must be a JSON object")
    return value


def client_address(request: Request) -> str:
    identity = (request.context or {}).get("identity") or {}
    return str(identity.get("sourceIp") or "unknown")


def cookie_value(request: Request, name: str) -> str | None:
    header = request.headers.get("cookie")
    if not header:
        return None
    try:
        jar = SimpleCookie(header)
    except CookieError:
        return None
    morsel = jar.get(name)
    return morsel.value if morsel else None


def session_token(request: Request) -> str | None:
    return cookie_value(request, SESSION_COOKIE)


def session_of(request: Request, find: Callable[[str], Session | None]) -> Session | None:
    token = session_token(request)
    return find(token) if token else None


def require_session(request: Request, find: Callable[[str], Session | None]) -> Session:
    """The caller's session; for state-changing methods also checks the CSRF token."""
    session = session_of(request, find)
    if session is None:
        raise Unauthorized("log in first")
    if request.method not in SAFE_METHODS:
        sent = request.headers.get(CSRF_HEADER, "")
        if not hmac.compare_digest(sent.encode(), session.csrf_token.encode()):
            raise Forbidden("missing or wrong X-CSRF-Token header")
    return session


def require_admin(session: Session) -> User:
    if not session.user.admin:
        raise Forbidden("only admins can do this")
    return session.user


def cookie(name: str, value: str, max_age: int, *, secure: bool, path: str = "/") -> str:
    """An HttpOnly, SameSite=Lax cookie (``Secure`` when the portal is https)."""
    parts = [f"{name}={value}", f"Path={path}", "HttpOnly", "SameSite=Lax",
             f"Max-Age={max_age}"]
    if secure:
        parts.append("Secure")
    return "; ".join(parts)


def session_cookie(token: str, max_age: int, *, secure: bool) -> str:
    return cookie(SESSION_COOKIE, token, max_age, secure=secure)


def endpoint(fn: Callable[..., Any], status: int = 200) -> Callable[..., Response]:
    """Wrap a view: its return value becomes JSON with ``status``; our errors become 4xx."""

    @functools.wraps(fn)
    def view(**kwargs: Any) -> Response:
        try:
            result = fn(**kwargs)
        except ControlPlaneError as exc:
            if exc.status >= 500:
                log.error("%s: %s", type(exc).__name__, exc.message)
            return error_response(exc)
        if isinstance(result, Response):
            return result
        if result is None:
            return Response(body="", status_code=204, headers={"Cache-Control": "no-store"})
        return json_response(result, status)

    return view


_FRAMEWORK_CODES = {400: "bad_request", 403: "forbidden", 404: "not_found",
                    405: "method_not_allowed", 413: "payload_too_large",
                    415: "unsupported_media_type", 500: "internal_error"}


def rewrite_framework_errors(event: Request, get_response: Callable[[Request], Response]
                             ) -> Response:
    """Chalice answers some errors itself as ``{"Code", "Message"}``; give them our shape."""
    response = get_response(event)
    body = response.body
    if response.status_code >= 400 and isinstance(body, dict) and "Code" in body:
        code = _FRAMEWORK_CODES.get(response.status_code, "error")
        message = str(body.get("Message", ""))
        if response.status_code >= 500:
            message = "internal error (a bug: please report it)"
        headers = {k: str(v) for k, v in response.headers.items()
                   if k.lower() != "content-type"}
        return json_response({"error": {"code": code, "message": message}},
                             response.status_code, headers)
    return response
