"""The portal's web UI: static files served by the same Chalice app as the API.

The UI is a single page (``portal/index.html`` + ``portal.js`` + ``portal.css``) that talks to
the JSON API, so these routes only hand out files. ``/login`` serves the same page: the auth
helper and the OAuth2 server send anonymous browsers to ``/login?next=<path>``, and the page
returns there after a successful login (same-origin paths only).

Register with ``app.register_blueprint(portal_routes.blueprint)``.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Final

from chalice.app import Blueprint, Response

PORTAL_DIR: Final = Path(__file__).resolve().parent / "portal"
CONTENT_TYPES: Final = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}
# Everything the page loads comes from the portal's own origin; nothing may frame it.
SECURITY_HEADERS: Final = {
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}

blueprint = Blueprint(__name__)


@cache
def _read(name: str) -> str:
    return (PORTAL_DIR / name).read_text(encoding="utf-8")


def _file(name: str, cache_control: str) -> Response:
    suffix = Path(name).suffix
    if suffix not in CONTENT_TYPES or Path(name).name != name or not (PORTAL_DIR / name).is_file():
        return Response(
            body={"error": {"code": "not_found", "message": f"no portal file {name!r}"}},
            status_code=404,
        )
    headers: dict[str, str | list[str]] = {
        "Content-Type": CONTENT_TYPES[suffix], "Cache-Control": cache_control,
        **SECURITY_HEADERS,
    }
    return Response(body=_read(name), status_code=200, headers=headers)


@blueprint.route("/")
def index() -> Response:
    return _file("index.html", "no-cache")


@blueprint.route("/login")
def login_page() -> Response:
    return _file("index.html", "no-cache")


@blueprint.route("/portal/{name}")
def portal_file(name: str) -> Response:
    return _file(name, "public, max-age=300")
