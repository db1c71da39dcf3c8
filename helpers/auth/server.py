"""The auth helper's sockets: its application on a private Unix socket, the gate in front.

:class:`AuthServer` is what ``python3 -m helpers.auth`` runs, and what tests start in-process.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile

from aiohttp import web

from helpers.auth.app import AuthHelper
from helpers.auth.gate import Gate


class AuthServer:
    """``start(host, port)`` serves ``helper``: the gate listens there (port 0: any, see
    ``addresses``); the application listens on a Unix socket in a fresh 0700 directory."""

    def __init__(self, helper: AuthHelper) -> None:
        self.helper = helper
        self.addresses: list[tuple[str, int]] = []
        self._runner: web.AppRunner | None = None
        self.gate: Gate | None = None
        """Its ``connection`` serves one connection; the listener hands it tunnel streams."""
        self._server: asyncio.Server | None = None
        self._private: str | None = None

    async def start(self, host: str, port: int) -> None:
        self._runner = web.AppRunner(self.helper.web_app(), access_log=None)
        await self._runner.setup()
        self._private = tempfile.mkdtemp(prefix="dit4c-auth-")
        app_socket = os.path.join(self._private, "app.sock")
        await web.UnixSite(self._runner, app_socket).start()
        loop = asyncio.get_running_loop()
        self.gate = Gate(self.helper, app_socket)
        self._server = await loop.create_server(self.gate.connection, host, port)
        self.addresses = [sock.getsockname()[:2] for sock in self._server.sockets]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._private is not None:
            shutil.rmtree(self._private, ignore_errors=True)
