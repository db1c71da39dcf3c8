"""Errors raised by the protocol package.

    ProtocolError
    ├── MessageError   a queue message is malformed, of an unknown type or version, or carries
    │                  an id off the id rule
    ├── TokenError     a token is malformed, forged, expired, or for another audience/host
    ├── TunnelError    a tunnel peer broke the wire format or its flow control: close the tunnel
    ├── HttpError      an HTTP/1.1 message is malformed (protocol.http1)
    └── RegistryError  an image reference or registry scope is not well formed
"""


class ProtocolError(Exception):
    """Root of every error the shared contracts raise."""


class MessageError(ProtocolError):
    """A queue message could not be decoded into a known, valid message."""


class TokenError(ProtocolError):
    """A token failed verification; the message says why, safe to show to the caller."""


class TunnelError(ProtocolError):
    """A peer broke the tunnel's wire format (:mod:`protocol.tunnel`); the tunnel must close."""


class HttpError(ProtocolError):
    """A malformed HTTP/1.1 message: 400 to a client, 502 when an upstream sent it."""


class RegistryError(ProtocolError):
    """An image reference or a registry token scope is not well formed."""
