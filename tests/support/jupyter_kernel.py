"""What JupyterLab's page does with a kernel, over plain aiohttp: for tests and benches.

A signed-in browser session (its cookie jar holds the auth helper's session cookie and
Jupyter's ``_xsrf`` cookie, set when the page was loaded) starts a kernel with
``POST /api/kernels``, opens ``/api/kernels/<id>/channels`` and sends ``execute_request``
messages (Jupyter's JSON WebSocket protocol, messaging spec 5.3).
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import aiohttp


def xsrf_headers(session: aiohttp.ClientSession) -> dict[str, str]:
    """Jupyter refuses state-changing requests without its ``_xsrf`` cookie echoed."""
    for cookie in session.cookie_jar:
        if cookie.key == "_xsrf":
            return {"X-XSRFToken": cookie.value}
    return {}


async def start_kernel(session: aiohttp.ClientSession, base: str) -> str:
    async with session.post(f"{base}/api/kernels", json={"name": "python3"},
                            headers=xsrf_headers(session)) as response:
        body = await response.text()
        assert response.status == 201, (response.status, body)
        kernel_id: str = json.loads(body)["id"]
        return kernel_id


async def stop_kernel(session: aiohttp.ClientSession, base: str, kernel_id: str) -> None:
    async with session.delete(f"{base}/api/kernels/{kernel_id}",
                              headers=xsrf_headers(session)) as response:
        assert response.status == 204, (response.status, await response.text())


def execute_request(code: str, session: str, msg_id: str, username: str = "test"
                    ) -> dict[str, Any]:
    """An ``execute_request`` on the shell channel, as JupyterLab's page sends a cell."""
    return {
        "header": {"msg_id": msg_id, "session": session, "username": username,
                   "msg_type": "execute_request", "version": "5.3",
                   "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
        "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
        "content": {"code": code, "silent": False, "store_history": False,
                    "user_expressions": {}, "allow_stdin": False, "stop_on_error": True},
    }


@dataclass
class Execution:
    """What one ``execute_request`` brought back."""

    reply: dict[str, Any]
    stdout: str = ""
    results: list[dict[str, Any]] = field(default_factory=list)
    reply_seconds: float = 0.0
    """From sending the request to receiving ``execute_reply``."""


class Kernel:
    """One kernel's channels WebSocket; :meth:`execute` runs code and waits for it to finish."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.session_id = uuid.uuid4().hex

    async def execute(self, code: str, wait: float = 60) -> Execution:
        msg_id = uuid.uuid4().hex
        await self.ws.send_str(json.dumps(execute_request(code, self.session_id, msg_id)))
        started = time.perf_counter()
        reply: dict[str, Any] | None = None
        reply_seconds = 0.0
        stdout, results, idle = "", [], False
        while reply is None or not idle:  # the reply, and the kernel's "idle" status after it
            message = await self.ws.receive(timeout=wait)
            assert message.type == aiohttp.WSMsgType.TEXT, message
            data = json.loads(message.data)
            if data.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind, content = data["msg_type"], data["content"]
            if kind == "execute_reply":
                reply, reply_seconds = content, time.perf_counter() - started
            elif kind == "stream" and content.get("name") == "stdout":
                stdout += content["text"]
            elif kind == "execute_result":
                results.append(content)
            elif kind == "status":
                idle = content["execution_state"] == "idle"
        return Execution(reply, stdout, results, reply_seconds)
