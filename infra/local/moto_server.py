"""moto's server mode inside this process, on one loopback address.

Like ``moto.server.ThreadedMotoServer``, but it binds in the caller's thread, so a port that is
taken is an ``OSError`` naming it at once (instead of a thread that dies while ``start()`` waits
forever, or werkzeug's ``sys.exit``), and ``stop()`` closes the listening socket. moto keeps
every service's state in this process's memory; :mod:`infra.local.snapshot` saves and restores
what must outlive it.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
from typing import Any

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import BaseWSGIServer, make_server

from infra.local.aws import AwsEndpoint

log = logging.getLogger("dit4c.local.moto")


class MotoServer:
    """Serves every AWS service moto has on ``host:port`` (port 0: a free one) until stopped.

    ``wrap``: a WSGI middleware put in front of moto (the storage tests' policy gate).
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0,
                 wrap: Callable[[Any], Any] | None = None) -> None:
        self._host = host
        self._port = port
        self._wrap = wrap
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> AwsEndpoint:
        # werkzeug logs every request at INFO on its own handler; keep warnings only.
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        app: Any = DomainDispatcherApplication(create_backend_app)
        if self._wrap is not None:
            app = self._wrap(app)
        # Bound here, not by werkzeug: on a taken port werkzeug prints and calls sys.exit().
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((self._host, self._port))
            listener.listen(128)
            self._server = make_server(
                self._host, self._port, app, threaded=True, request_handler=MotoRequestHandler,
                fd=listener.fileno(),
            )
        except OSError as exc:
            raise OSError(
                exc.errno, f"moto cannot listen on {self._host}:{self._port} (DIT4C_AWS_PORT): "
                f"{exc.strerror}"
            ) from exc
        finally:
            listener.close()  # the server holds its own duplicate of the socket
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
            name="moto-server", daemon=True,
        )
        self._thread.start()
        log.info("moto serving on %s", self.endpoint.url)
        return self.endpoint

    @property
    def endpoint(self) -> AwsEndpoint:
        if self._server is None:
            raise RuntimeError("MotoServer.start() first")
        host, port = self._server.server_address[:2]
        if isinstance(host, bytes):
            host = host.decode()
        return AwsEndpoint(f"http://{host}:{port}")

    def stop(self) -> None:
        """Stop serving and close the socket; harmless when not started."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None
