"""Errors of the edge router.

    RouterError              root of everything the router raises
    ├── ConfigError          a DIT4C_ROUTER_* setting is missing or invalid (fails start-up)
    ├── BadRequest           a malformed HTTP message (status 400 to a client, 502 from upstream;
    │                        also a protocol.errors.HttpError, as protocol.http1 raises)
    ├── TunnelRefused        a tunnel's token or host was refused (status 401/403)
    └── KeysUnavailable      no JWKS could be fetched yet: tunnels get 503 and retry soon
"""

from __future__ import annotations

from protocol.errors import HttpError


class RouterError(Exception):
    """Root of the router's own errors."""


class ConfigError(RouterError):
    """A setting is missing or invalid; the message names it."""


class BadRequest(RouterError, HttpError):
    status = 400


class TunnelRefused(RouterError):
    def __init__(self, message: str, status: int = 403) -> None:
        super().__init__(message)
        self.status = status


class KeysUnavailable(RouterError):
    """The control plane's keys have never been fetched; not the token's fault."""
