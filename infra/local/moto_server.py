"""moto's server mode inside this process, on one loopback address.

Like ``moto.server.ThreadedMotoServer``, but it binds in the caller's thread, so a port that is
taken is an ``OSError`` naming it at once (instead of a thread that dies while ``start()`` waits
forever, or werkzeug's ``sys.exit``), and ``stop()`` closes the listening socket. moto keeps
every service's state in this process's memory; :mod:`infra.local.durable` writes what must
outlive it through to disk, as the middleware in front of it (``wrap``).
"""

from __future__ import annotations

import logging
import socket
import threading
import urllib.request
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


class DynamoDbTakesTurns:
    """WSGI middleware: DynamoDB requests one at a time, every other service concurrently.

    moto's DynamoDB backend is not thread-safe: ``TransactWriteItems`` deep-copies tables that
    concurrent writes are changing, which fails with "dictionary changed size during
    iteration" (a 500 to the caller) — 100 launches at once hit it every time. Real DynamoDB has
    no such limit. SQS and the rest stay concurrent: a long poll must not hold anyone up.
    """

    def __init__(self, app: Any) -> None:
        self._app = app
        self._lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        if not environ.get("HTTP_X_AMZ_TARGET", "").startswith("DynamoDB"):
            return self._app(environ, start_response)
        with self._lock:
            return list(self._app(environ, start_response))  # the whole answer, in turn


class MotoServer:
    """Serves every AWS service moto has on ``host:port`` (port 0: a free one) until stopped.

    ``wrap``: a WSGI middleware put in front of moto (the IAM tests' policy gate, the storage
    tests' S3 gate).
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
        app: Any = DynamoDbTakesTurns(DomainDispatcherApplication(create_backend_app))
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

    def reset(self) -> None:
        """Forget every service's state (moto's ``/moto-api/reset``). moto keeps it per process,
        not per server: a test done with its resources resets, so the next finds none."""
        url = f"{self.endpoint.url}/moto-api/reset"  # http://<our loopback address>
        request = urllib.request.Request(url, method="POST")  # noqa: S310
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            response.read()

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
