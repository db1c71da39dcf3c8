"""Serving the Chalice app (portal + API) over HTTP, as API Gateway would, on several addresses.

Chalice's own local mode does the adapting (``chalice.local``: request -> API Gateway proxy
event -> app -> response); this module only binds it to each address the stack needs (loopback,
and the pods network's gateway so pods reach the portal as ``host.docker.internal``), one thread
per connection. Like ``chalice local``, the app's class is swapped for one whose
``current_request`` is thread-local, so concurrent requests do not see each other's request.
A path no route serves gets the API's JSON 404 (:func:`control_plane.gateway.not_found`), as
through API Gateway, instead of ``chalice.local``'s imitation of API Gateway's 403.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import urlsplit

from chalice.app import Chalice
from chalice.config import Config
from chalice.local import (
    ChaliceRequestHandler,
    CustomLocalChalice,
    LocalChalice,
    LocalDevServer,
    LocalGateway,
    ThreadedHTTPServer,
)

from control_plane.gateway import RouteTable, not_found

log = logging.getLogger("dit4c.local.portal")
access_log = logging.getLogger("dit4c.local.portal.access")


class PortalGateway(LocalGateway):
    """``chalice.local``'s gateway, answering unknown paths as the deployed handler does."""

    def __init__(self, app: Chalice, config: Config) -> None:
        super().__init__(app, config)
        self._routes = RouteTable(app.routes)

    def handle_request(self, method: str, path: str, headers: Any, body: bytes | None
                       ) -> Any:
        bare = urlsplit(path).path
        if self._routes.resolve(bare) is None:
            return not_found(bare)
        return super().handle_request(method, path, headers, body)


class _RequestHandler(ChaliceRequestHandler):
    """Chalice's handler with :class:`PortalGateway`, logging through ``logging`` (not stderr)."""

    def __init__(self, request: Any, client_address: Any, server: Any, app_object: Chalice,
                 config: Config) -> None:
        self.local_gateway = PortalGateway(app_object, config)
        BaseHTTPRequestHandler.__init__(self, request, client_address, server)

    def log_message(self, format: str, *args: Any) -> None:
        access_log.info("%s %s", self.address_string(), format % args)


class _Server(ThreadedHTTPServer):
    request_queue_size = 64  # the default 5 refuses connections when a browser opens many


class PortalServer:
    """The Chalice app on every ``(host, port)`` given, until ``stop()``.

    Binding happens in ``start()`` in the caller's thread, so an address in use is an
    ``OSError`` naming it before anything else runs.
    """

    def __init__(
        self, app: Chalice, addresses: Sequence[tuple[str, int]], timeout: int, memory_mb: int,
        function_name: str,
    ) -> None:
        self._app = app
        self._addresses = list(addresses)
        self._config = Config.create(
            function_name=function_name, lambda_timeout=timeout, lambda_memory_size=memory_mb
        )
        self._servers: list[LocalDevServer] = []
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        _make_request_local(self._app)
        for host, port in self._addresses:
            try:
                server = LocalDevServer(
                    self._app, self._config, host, port, handler_cls=_RequestHandler,
                    server_cls=_Server,
                )
            except OSError as exc:
                self.stop()
                raise OSError(
                    exc.errno,
                    f"the portal cannot listen on {host}:{port} (DIT4C_PORTAL_PORT): "
                    f"{exc.strerror}",
                ) from exc
            self._servers.append(server)
            thread = threading.Thread(
                target=server.server.serve_forever, kwargs={"poll_interval": 0.1},
                name=f"portal-{host}:{port}", daemon=True,
            )
            thread.start()
            self._threads.append(thread)
            log.info("portal serving on http://%s:%d", host, port)

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """Where it listens once started: the ports bound when 0 was asked for."""
        return [(str(s.server.server_address[0]), int(s.server.server_address[1]))
                for s in self._servers]

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
        self._servers.clear()
        self._threads.clear()


def use_process_logging(app: Chalice) -> None:
    """Undo Chalice's Lambda logging set-up so the app logs like the rest of the stack.

    Chalice gives its app logger (named after the app, here the parent of every ``dit4c.*``
    logger) a stdout handler, a level of its own and ``propagate = False``: right on Lambda,
    but locally it would pull every part's log lines out of the stack's own log.
    """
    for handler in list(app.log.handlers):
        app.log.removeHandler(handler)
    app.log.propagate = True
    app.log.setLevel(logging.NOTSET)


def _make_request_local(app: Chalice) -> None:
    """What ``chalice.local.create_local_server`` does to the app, done once."""
    if isinstance(app, LocalChalice):
        return
    CustomLocalChalice.__bases__ = (LocalChalice, app.__class__)
    app.__class__ = CustomLocalChalice
