"""Errors of the auth helper.

    AuthHelperError
    ├── ConfigError      a setting is missing or malformed (start-up fails, naming it)
    └── PortalError      the portal's token endpoint or JWKS did not give what we need
        └── GrantRefused the portal answered with an OAuth2 error: the grant is gone for good
"""

from __future__ import annotations


class AuthHelperError(Exception):
    """Root of every error the auth helper raises."""


class ConfigError(AuthHelperError):
    pass


class PortalError(AuthHelperError):
    """Transient or unexpected: the portal could not be reached or answered nonsense."""


class GrantRefused(PortalError):
    """The portal refused the code or refresh token (``error`` holds its RFC 6749 code)."""

    def __init__(self, error: str, description: str) -> None:
        super().__init__(f"{error}: {description}" if description else error)
        self.error = error
        self.description = description
