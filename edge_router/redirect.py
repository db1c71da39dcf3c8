"""The plain-HTTP listener of a router that serves HTTPS (``DIT4C_ROUTER_REDIRECT_LISTEN``).

Its connections are the proxy's own (:class:`edge_router.proxy.ClientConnection` with a
redirect port), so the same strict parsing, head size and time limits and per-client limits
hold on it; only the answer differs. Every request for an instance host (``<id>.<domain>``)
gets ``308 Permanent Redirect`` to the same target on ``https://`` (308 rather than 301: a
POST stays a POST) and the connection is closed. Nothing is proxied here, tunnels included: a
listener must dial ``wss://``. The ``Location`` is built from the checked instance host, never
copied from the ``Host`` header, so the listener cannot be made to point anywhere but this
router's own instances; any other host gets 404.
"""

from __future__ import annotations

from protocol.ids import instance_host, instance_of_host


def location(host: str, target: bytes, *, domain: str, https_port: int) -> bytes | None:
    """Where a request for ``host`` (no port) and ``target`` goes, or None when the host is no
    instance host of ``domain``. A target that is not a plain path (an absolute URL, ``*``, or
    bytes a header must not hold) becomes ``/``."""
    instance = instance_of_host(host, domain)
    if instance is None:
        return None
    authority = instance_host(instance, domain) + ("" if https_port == 443 else f":{https_port}")
    path = target if target.startswith(b"/") and all(0x21 <= b <= 0x7E for b in target) else b"/"
    return b"https://" + authority.encode() + path


def redirect_response(to: bytes) -> bytes:
    """The complete answer: 308 to ``to``, then the connection closes."""
    return (b"HTTP/1.1 308 Permanent Redirect\r\nLocation: " + to
            + b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
