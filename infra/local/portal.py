"""Serving the Chalice app (portal + API) over HTTP, as API Gateway would, on several addresses.

Chalice's own local mode does the adapting (``chalice.local``: request -> API Gateway proxy
event -> app -> response); this module only binds it to each address the stack needs (loopback,
and the pods network's gateway so pods reach the portal as ``host.docker.internal``), one thread
per connection. Like ``chalice local``, the app's class is swapped for one whose
``current_request`` is thread-local, so concurrent requests do not see each other's request.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

from chalice.app import Chalice
from chalice.config import Config
from chalice.local import (
    ChaliceRequestHandler,
    CustomLocalChalice,
    LocalChalice,
    LocalDevServer,
    ThreadedHTTPServer,
)

log = logging.getLogger("dit4c.local.portal")
access_log = logging.getLogger("dit4c.local.portal.access")


class _RequestHandler(ChaliceRequestHandler):
    """Chalice's handler, logging through ``logging`` instead of printing to stderr."""

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
