"""HTTP routes of the OAuth2 server (``GET /oauth/authorize``, ``POST /oauth/token``).

A Chalice ``Blueprint`` made by :func:`oauth_blueprint`; ``app.py`` registers it with::

    app.register_blueprint(oauth_blueprint(get_server=..., session_username=...))

The routes only translate HTTP to :class:`control_plane.oauth.OAuthServer` calls:

- ``/oauth/authorize`` without a portal session redirects to the login page with ``next`` set
  to this very request, so the browser comes back after login. Errors that cannot go back to a
  verified redirect URI (unknown client, wrong ``redirect_uri``, a user without access) are shown
  here: an HTML page for browsers, RFC 6749 JSON for everything else.
- ``/oauth/token`` takes ``application/x-www-form-urlencoded`` and answers RFC 6749 JSON, never
  cached.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlencode

from chalice.app import Blueprint, Request, Response

from control_plane.oauth import InvalidClient, InvalidRequest, OAuthError, OAuthServer
from protocol import pod

FORM = "application/x-www-form-urlencoded"
Headers = dict[str, str | list[str]]
NO_STORE: Headers = {"Cache-Control": "no-store", "Pragma": "no-cache"}
MAX_FORM_BYTES = 16 * 1024


def oauth_blueprint(
    *,
    get_server: Callable[[], OAuthServer],
    session_username: Callable[[Request], str | None],
    login_path: str = "/login",
) -> Blueprint:
    """The OAuth2 routes over the server ``get_server()`` returns (called per request).

    ``session_username(request)`` is the logged-in portal user, or None for an anonymous visitor;
    ``login_path`` is the portal's login page, which must send the browser on to its ``next``
    parameter (a path on the portal: it must refuse anything not starting with a single ``/``).
    """
    bp = Blueprint(__name__)

    @bp.route(pod.OAUTH_AUTHORIZE_PATH, methods=["GET"])
    def authorize() -> Response:
        request = bp.current_request
        try:
            params = _single_values(request.query_params or {})
        except OAuthError as exc:
            return _error_page(request, exc)
        username = session_username(request)
        if username is None:
            here = pod.OAUTH_AUTHORIZE_PATH + (f"?{urlencode(params)}" if params else "")
            return Response("", status_code=302,
                            headers={"Location": f"{login_path}?{urlencode({'next': here})}",
                                     **NO_STORE})
        try:
            location = get_server().authorize(username, params)
        except OAuthError as exc:
            back = exc.redirect_url()
            if back is None:
                return _error_page(request, exc)
            location = back
        return Response("", status_code=302, headers={"Location": location, **NO_STORE})

    @bp.route("/oauth/token", methods=["POST"], content_types=[FORM])
    def token() -> Response:
        request = bp.current_request
        try:
            raw = request.raw_body or b""
            body = raw.encode() if isinstance(raw, str) else raw
            if len(body) > MAX_FORM_BYTES:
                raise InvalidRequest("request body too large")
            try:
                parsed = parse_qs(body.decode(), keep_blank_values=True, strict_parsing=False)
            except UnicodeDecodeError:
                raise InvalidRequest("form is not UTF-8") from None
            form = _single_values(parsed)
            answer = get_server().token(form, request.headers.get("authorization"))
        except OAuthError as exc:
            headers: Headers = {**NO_STORE}
            if isinstance(exc, InvalidClient):
                headers["WWW-Authenticate"] = 'Basic realm="dit4c"'
            return Response(exc.as_json(), status_code=exc.status, headers=headers)
        return Response(answer, status_code=200, headers=NO_STORE)

    return bp


def _single_values(params: Any) -> dict[str, str]:
    """Parameters as a plain dict; RFC 6749 3.1/3.2: none may appear twice."""
    out: dict[str, str] = {}
    for name in params:
        values = params.getlist(name) if hasattr(params, "getlist") else params[name]
        if isinstance(values, str):
            values = [values]
        if len(values) != 1:
            raise InvalidRequest(f"parameter {name!r} given more than once")
        out[name] = values[0]
    return out


def _error_page(request: Request, exc: OAuthError) -> Response:
    if "text/html" not in (request.headers.get("accept") or ""):
        return Response(exc.as_json(), status_code=exc.status, headers=NO_STORE)
    title = "Access denied" if exc.status == 403 else "Bad sign-in request"
    page = (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{title}</title></head><body><h1>{title}</h1>"
        f"<p>{html.escape(exc.description)}</p>"
        "<p><a href='/'>Back to the portal</a></p></body></html>"
    )
    return Response(page, status_code=exc.status,
                    headers={"Content-Type": "text/html; charset=utf-8", **NO_STORE})
