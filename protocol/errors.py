"""Errors raised by the protocol package.

    ProtocolError
    ├── MessageError   a queue message is malformed, of an unknown type or version
    ├── TokenError     a token is malformed, forged, expired, or for another audience/host
    └── HttpError      an HTTP/1.1 message is malformed (protocol.http1)
"""


class ProtocolError(Exception):
    """Root of every error the shared contracts raise."""


class MessageError(ProtocolError):
    """A queue message could not be decoded into a known, valid message."""


class TokenError(ProtocolError):
    """A token failed verification; the message says why, safe to show to the caller."""


class HttpError(ProtocolError):
    """A malformed HTTP/1.1 message: 400 to a client, 502 when an upstream sent it."""
