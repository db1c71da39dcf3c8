"""The local stack (``python -m infra.local run``) as a real process, and a user of it.

- :class:`StackProcess` — one stack process with its output collected line by line;
- :class:`Browser` — just enough of a browser (cookies per host name, redirects,
  ``*.localhost`` to 127.0.0.1) for the portal's login and an instance's OAuth2 sign-in;
- :func:`log_in`, :func:`launch_test_tool`, :func:`reach` — what a user does;
- :func:`children`, :func:`alive` — the stack's child processes as its run directory records them.

Used by ``tests/integration/test_local_stack.py`` and the fault suite
(:mod:`tests.support.faults`).
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

from infra.local.stack import REPO_ROOT
from tests.ports import free_port

READY_TIMEOUT = 180
STOP_DEADLINE = 10  # the contract: Ctrl-C stops everything within 10 seconds


def stack_settings(data_dir: Path, pods_network: str, labels: dict[str, str],
                   helpers_image: str) -> dict[str, str]:
    """A test stack's environment: free ports, its own data directory and pods network, the
    test run's labels on what it makes, the given helpers image (the tests' own tag: other
    checkouts on a shared engine move ``dit4c/helpers:dev``), heartbeats every 2 s."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "DIT4C_"))}
    env.update({
        "DIT4C_DATA_DIR": str(data_dir),
        "DIT4C_PORTAL_PORT": str(free_port()),
        "DIT4C_ROUTER_PORT": str(free_port()),
        "DIT4C_AWS_PORT": str(free_port()),
        "DIT4C_REGISTRY_PORT": str(free_port()),
        "DIT4C_STACK_NAME": "dit4c-test",
        "DIT4C_PUBLISH_HELPERS": "0",  # only the home-node test needs it (it sets 1)
        "DIT4C_NODE_PODS_NETWORK": pods_network,
        "DIT4C_NODE_LABELS": ",".join(f"{k}={v}" for k, v in labels.items()),
        "DIT4C_NODE_METRICS_LISTEN": "127.0.0.1:0",
        "DIT4C_NODE_HEARTBEAT_SECONDS": "2",
        "DIT4C_NODE_HELPERS_IMAGE": helpers_image,
    })
    return env


class StackProcess:
    """One ``python -m infra.local run`` with its output collected line by line."""

    def __init__(self, env: dict[str, str], args: Sequence[str] = ()) -> None:
        # Never the default 5001 in a test: `make run` may hold it.
        env.setdefault("DIT4C_REGISTRY_PORT", str(free_port()))
        env.setdefault("DIT4C_EXPORT_PORT", str(free_port()))
        self.env = env
        self.lines: list[str] = []
        self.errors: list[str] = []
        self._ready = threading.Event()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "infra.local", "run", *args], cwd=REPO_ROOT, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        threading.Thread(target=self._read, args=(self.process.stdout, self.lines),
                         daemon=True).start()
        threading.Thread(target=self._read, args=(self.process.stderr, self.errors),
                         daemon=True).start()

    def _read(self, stream: Any, into: list[str]) -> None:
        for line in stream:
            into.append(line.rstrip("\n"))
            if "Ctrl-C stops everything." in line:
                self._ready.set()

    def wait_ready(self) -> str:
        deadline = time.monotonic() + READY_TIMEOUT
        while not self._ready.wait(0.2):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(
                    f"stack not ready (exit {self.process.poll()}):\n" + self.output()
                )
        return "\n".join(self.lines)

    def output(self) -> str:
        return "\n".join(["-- stdout", *self.lines, "-- stderr", *self.errors[-80:]])

    def interrupt(self, sig: signal.Signals = signal.SIGINT) -> float:
        """SIGINT (Ctrl-C) or SIGTERM; returns how long the stack took to exit."""
        started = time.monotonic()
        self.process.send_signal(sig)
        try:
            self.process.wait(STOP_DEADLINE)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"still running {STOP_DEADLINE} s after {sig.name}:\n{self.output()}"
            ) from None
        return time.monotonic() - started

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


def get(
    port: int, path: str, *, host: str | None = None, method: str = "GET", body: Any = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        all_headers = {"Host": host or f"localhost:{port}", **(headers or {})}
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            all_headers["Content-Type"] = "application/json"
        connection.request(method, path, body=payload, headers=all_headers)
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def get_status(port: int, path: str) -> int:
    """The status of a GET on 127.0.0.1:``port``; 0 when nothing answers."""
    try:
        return get(port, path)[0]
    except OSError:
        return 0


def port_of(env: dict[str, str], name: str) -> int:
    return int(env[name])


class Browser:
    """Just enough of a browser: cookies per host name (not port, as browsers do), redirects,
    and ``*.localhost`` resolved to 127.0.0.1 (Python's resolver does not)."""

    def __init__(self) -> None:
        self.cookies: dict[str, dict[str, str]] = {}
        self.csrf = ""

    def request(
        self, url: str, method: str = "GET", body: Any = None, follow: bool = True
    ) -> tuple[int, str, bytes]:
        """Returns the final (status, url, body)."""
        for _ in range(10):
            parts = urlsplit(url)
            host = parts.hostname or ""
            jar = self.cookies.setdefault(host, {})
            headers = {"Cookie": "; ".join(f"{k}={v}" for k, v in jar.items())} if jar else {}
            if self.csrf and method != "GET":
                headers["X-CSRF-Token"] = self.csrf
            path = parts.path or "/"
            if parts.query:
                path += "?" + parts.query
            status, response_headers, content, cookies = _exchange(
                parts.port or 80, path, host=parts.netloc, method=method, body=body,
                headers=headers,
            )
            for cookie in cookies:
                name, _, rest = cookie.partition("=")
                value = rest.split(";", 1)[0]
                if "max-age=0" in cookie.lower() or not value:
                    jar.pop(name, None)
                else:
                    jar[name] = value
            location = response_headers.get("location")
            if not (follow and status in (301, 302, 303, 307) and location):
                return status, url, content
            url = urljoin(url, location)
            method, body = "GET", None
        raise AssertionError(f"too many redirects, last {url}")


def _exchange(
    port: int, path: str, *, host: str, method: str, body: Any, headers: dict[str, str]
) -> tuple[int, dict[str, str], bytes, list[str]]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        all_headers = {"Host": host, **headers}
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            all_headers["Content-Type"] = "application/json"
        connection.request(method, path, body=payload, headers=all_headers)
        response = connection.getresponse()
        cookies = response.msg.get_all("Set-Cookie") or []
        return (response.status, {k.lower(): v for k, v in response.getheaders()},
                response.read(), cookies)
    finally:
        connection.close()


def log_in(browser: Browser, portal: int, username: str, password: str) -> int:
    status, _, body = browser.request(
        f"http://localhost:{portal}/api/login", "POST",
        {"username": username, "password": password},
    )
    if status == 200:
        browser.csrf = json.loads(body)["csrf_token"]
    return status


def launch_test_tool(browser: Browser, portal: int) -> dict[str, Any]:
    status, _, body = browser.request(f"http://localhost:{portal}/api/images")
    assert status == 200, body
    (tool,) = [i for i in json.loads(body)["images"] if i["image"] == "dit4c/test-tool:busybox"]
    status, _, body = browser.request(
        f"http://localhost:{portal}/api/instances", "POST", {"image_id": tool["id"]}
    )
    assert status == 202, body
    instance_id = json.loads(body)["id"]
    deadline = time.monotonic() + 120
    while True:
        status, _, body = browser.request(f"http://localhost:{portal}/api/instances/{instance_id}")
        instance: dict[str, Any] = json.loads(body)
        if instance["state"] in ("running", "failed") or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert instance["state"] == "running", instance
    return instance


def reach(browser: Browser, url: str, within: float = 60) -> tuple[int, str, bytes]:
    """GET ``url`` until its pod's tunnel is back (404 until the router has it, 502 until the
    pod's auth helper answers; nothing listens while a router or portal restarts), at most
    ``within`` seconds. Status 0: nothing answered."""
    deadline = time.monotonic() + within
    while True:
        try:
            status, final, body = browser.request(url)
        except OSError as exc:
            status, final, body = 0, url, str(exc).encode()
        if status not in (0, 404, 502, 503) or time.monotonic() > deadline:
            return status, final, body
        time.sleep(0.25)


def children(data_dir: Path) -> dict[str, int]:
    """The stack's children by name, from its run directory (a pid file being written, or
    removed, meanwhile is left out)."""
    found = {}
    for path in (data_dir / "run").glob("*.pid"):
        try:
            found[path.stem] = int(json.loads(path.read_text())["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
