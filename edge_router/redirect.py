"""The plain-HTTP listener of a router that serves HTTPS (``DIT4C_ROUTER_REDIRECT_LISTEN``).

Every request for an instance host (``<id>.<domain>``) is answered ``308 Permanent Redirect``
to the same target on ``https://`` (308 rather than 301: a POST stays a POST). Nothing is
proxied here, tunnels included: a listener must dial ``wss://``. The ``Location`` is built
from the validated instance host, never from the raw ``Host`` header, so the listener cannot be
made to point anywhere but this router's own instances; any other host gets 404.
"""

from __future__ import annotations

from aiohttp import web

from edge_router.pages import TEXTS
from protocol.ids import instance_host, instance_of_host


def location(host_header: str, target: str, *, domain: str, https_port: int) -> str | None:
    """Where a request for ``host_header`` (maybe with a port) and ``target`` goes, or None
    when the host is no instance host of ``domain``."""
    name, sep, port = host_header.rpartition(":")
    if not sep or not port.isdigit():
        name = host_header
    instance = instance_of_host(name, domain)
    if instance is None:
        return None
    authority = instance_host(instance, domain) + ("" if https_port == 443 else f":{https_port}")
    path = target if target.startswith("/") else "/"
    return f"https://{authority}{path}"


def redirect_app(domain: str, https_port: int) -> web.Application:
    async def redirect(request: web.Request) -> web.Response:
        target = location(request.headers.get("Host", ""), request.raw_path, domain=domain,
                          https_port=https_port)
        if target is None:
            return web.Response(status=404, text=TEXTS[404] + "\n",
                                headers={"Cache-Control": "no-store"})
        return web.Response(status=308, text=f"{target}\n", headers={"Location": target})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", redirect)
    return app
