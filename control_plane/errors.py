"""Errors of the control plane; each carries its HTTP status and a stable ``code``.

    ControlPlaneError (500)          root; a bare one is a bug
    ├── ConfigError (500)            a setting is missing or malformed (start-up)
    ├── BadRequest (400)             malformed JSON, wrong types, bad values
    │   └── PayloadTooLarge (413)
    ├── Unauthorized (401)           no session, bad password, bad or expired token
    ├── Forbidden (403)              authenticated but not allowed (CSRF, not admin, drained)
    ├── NotFound (404)               unknown id, or another user's id (never reveal which)
    ├── Conflict (409)               wrong state for the request, a lost conditional write
    ├── TooManyRequests (429)        login throttling, per-user instance limit
    └── Unavailable (503)            a dependency (the image server) did not answer: try again

The API turns each into ``{"error": {"code", "message"}}`` with ``status``; the message is safe
to show to the caller.
"""

from __future__ import annotations

from typing import ClassVar


class ControlPlaneError(Exception):
    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"

    def __init__(self, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after

    def to_body(self) -> dict[str, dict[str, str]]:
        return {"error": {"code": self.code, "message": self.message}}


class ConfigError(ControlPlaneError):
    code = "config_error"


class BadRequest(ControlPlaneError):
    status = 400
    code = "bad_request"


class PayloadTooLarge(BadRequest):
    status = 413
    code = "payload_too_large"


class Unauthorized(ControlPlaneError):
    status = 401
    code = "unauthorized"


class Forbidden(ControlPlaneError):
    status = 403
    code = "forbidden"


class NotFound(ControlPlaneError):
    status = 404
    code = "not_found"


class Conflict(ControlPlaneError):
    status = 409
    code = "conflict"


class TooManyRequests(ControlPlaneError):
    status = 429
    code = "too_many_requests"


class Unavailable(ControlPlaneError):
    status = 503
    code = "unavailable"
