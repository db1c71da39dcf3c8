"""Which requests a browser may send to the tool on the strength of the session cookie.

Every instance lives under one parent domain, so instances are *same-site* to each other and
the session cookie (``SameSite=Lax``) goes along with requests that one instance's page makes
to another: a page in instance A, shared with the victim, can open a WebSocket to the victim's
own instance B or POST to it, as the victim. A tool without an ``Origin`` check of its own (a
web terminal) would then run the attacker's commands.

So a WebSocket handshake or an unsafe method (anything but GET, HEAD, OPTIONS) passes only when
its ``Origin`` is this instance's own origin. ``Origin: null`` (sandboxed frames, redirects
across origins) is foreign. A request **without** ``Origin`` passes: browsers send ``Origin`` on
every WebSocket handshake and every non-GET/HEAD request, cross- or same-origin, so a request
without one did not come from a page; it comes from a program (curl, a notebook's own API
client) that holds the cookie because its user put it there, and there is no one to forge it
for. Where a browser omits ``Origin`` anyway but says where the request came from
(``Sec-Fetch-Site``), anything but ``same-origin`` or ``none`` (the user's own navigation) is
refused too. Safe methods are left alone: SameSite=Lax already sends the cookie on a top-level
navigation from anywhere, and a GET must not change anything.
"""

from __future__ import annotations

from typing import Final
from urllib.parse import urlsplit

SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})
OWN_FETCH_SITES: Final = frozenset({"same-origin", "none"})
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}


def origin_of(url: str) -> str:
    """The origin of ``url`` as browsers serialise it in ``Origin``: lower case, no default
    port, no path."""
    parts = urlsplit(url)
    scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    port = parts.port
    return f"{scheme}://{host}" if port in (None, _DEFAULT_PORTS.get(scheme)) \
        else f"{scheme}://{host}:{port}"


def foreign(method: str, *, upgrade: bool, origin: str | None, fetch_site: str | None,
            own_origin: str) -> bool:
    """True when this request may not use the session: a WebSocket handshake (any upgrade) or
    an unsafe method that a page of another origin sent (see the module docstring)."""
    if method in SAFE_METHODS and not upgrade:
        return False
    if origin is not None:
        return origin.strip().lower() != own_origin
    return fetch_site is not None and fetch_site.strip().lower() not in OWN_FETCH_SITES
