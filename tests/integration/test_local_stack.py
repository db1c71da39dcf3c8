"""``python -m infra.local run`` as a real process: ready, health, 404 page, Ctrl-C, restart.

The stack runs on free ports, with a temporary data directory and its own pods network
(labelled with this test run, so cleanup finds it).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from infra.local.stack import REPO_ROOT

pytestmark = pytest.mark.docker

READY_TIMEOUT = 180
STOP_DEADLINE = 10  # the contract: Ctrl-C stops everything within 10 seconds


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class StackProcess:
    """One ``python -m infra.local run`` with its output collected line by line."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.lines: list[str] = []
        self.errors: list[str] = []
        self._ready = threading.Event()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "infra.local", "run"], cwd=REPO_ROOT, env=env,
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

    def interrupt(self) -> float:
        """SIGINT (Ctrl-C); returns how long the stack took to exit."""
        started = time.monotonic()
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(STOP_DEADLINE)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"still running {STOP_DEADLINE} s after SIGINT:\n{self.output()}"
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


@pytest.fixture(scope="module")
def stack_env(tmp_path_factory, unique_name, run_labels, docker_client) -> dict[str, str]:
    data_dir = tmp_path_factory.mktemp("local-stack") / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "DIT4C_"))}
    env.update({
        "DIT4C_DATA_DIR": str(data_dir),
        "DIT4C_PORTAL_PORT": str(free_port()),
        "DIT4C_ROUTER_PORT": str(free_port()),
        "DIT4C_AWS_PORT": str(free_port()),
        "DIT4C_STACK_NAME": "dit4c-test",
        "DIT4C_NODE_PODS_NETWORK": unique_name("pods"),
        "DIT4C_NODE_LABELS": ",".join(f"{k}={v}" for k, v in run_labels.items()),
        "DIT4C_NODE_METRICS_LISTEN": "127.0.0.1:0",
        "DIT4C_NODE_HEARTBEAT_SECONDS": "2",
        "DIT4C_SNAPSHOT_SECONDS": "2",
    })
    return env


@pytest.fixture(scope="module")
def running(stack_env) -> Iterator[StackProcess]:
    stack = StackProcess(stack_env)
    try:
        stack.wait_ready()
        yield stack
    finally:
        stack.kill()


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


def port_of(env: dict[str, str], name: str) -> int:
    return int(env[name])


# -- a running stack ---------------------------------------------------------------------------


def test_the_ready_block_names_the_portal_and_the_admin_login(running, stack_env):
    block = "\n".join(running.lines)
    portal = port_of(stack_env, "DIT4C_PORTAL_PORT")
    assert f"portal:     http://localhost:{portal}" in block
    password = (Path(stack_env["DIT4C_DATA_DIR"]) / "admin-password").read_text().strip()
    assert f"login:      admin / {password}" in block
    assert "ready in" in block


def test_health_answers_json(running, stack_env):
    status, headers, body = get(port_of(stack_env, "DIT4C_PORTAL_PORT"), "/api/health")
    assert status == 200, body
    assert headers["content-type"].startswith("application/json")
    assert isinstance(json.loads(body), dict)


def test_the_portal_listens_on_the_pods_gateway_too_but_not_everywhere(
    running, stack_env, docker_client
):
    network = docker_client.networks.get(stack_env["DIT4C_NODE_PODS_NETWORK"])
    gateway = network.attrs["IPAM"]["Config"][0]["Gateway"]
    port = port_of(stack_env, "DIT4C_PORTAL_PORT")
    connection = http.client.HTTPConnection(gateway, port, timeout=10)
    try:
        connection.request("GET", "/api/health")
        assert connection.getresponse().status == 200
    finally:
        connection.close()
    listening = Path("/proc/net/tcp").read_text()
    assert f"00000000:{port:04X}" not in listening, "the portal listens on 0.0.0.0"


def test_an_unknown_host_gets_a_404_page(running, stack_env):
    port = port_of(stack_env, "DIT4C_ROUTER_PORT")
    status, _, body = get(port, "/", host=f"nothing.localhost:{port}")
    assert status == 404
    assert body


def test_the_node_is_enrolled_and_sends_heartbeats(running, stack_env):
    identity = json.loads((Path(stack_env["DIT4C_DATA_DIR"]) / "node" / "node.json").read_text())
    assert identity["node_id"] in "\n".join(running.lines)


def test_a_second_stack_on_the_same_data_dir_is_refused(running, stack_env):
    env = {**stack_env, "DIT4C_PORTAL_PORT": str(free_port()),
           "DIT4C_ROUTER_PORT": str(free_port()), "DIT4C_AWS_PORT": str(free_port())}
    second = subprocess.run(
        [sys.executable, "-m", "infra.local", "run"], cwd=REPO_ROOT, env=env,
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert second.returncode == 1
    assert "in use by a running local stack" in second.stderr
    # ... and the first one is unharmed.
    assert get(port_of(stack_env, "DIT4C_PORTAL_PORT"), "/api/health")[0] == 200


# -- stop and start again ----------------------------------------------------------------------


def _listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
    return False


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _login(port: int, password: str) -> int:
    return get(port, "/api/login", method="POST",
               body={"username": "admin", "password": password})[0]


def test_sigint_stops_everything_and_a_restart_keeps_the_data(running, stack_env):
    data_dir = Path(stack_env["DIT4C_DATA_DIR"])
    ports = [port_of(stack_env, n)
             for n in ("DIT4C_PORTAL_PORT", "DIT4C_ROUTER_PORT", "DIT4C_AWS_PORT")]
    aws = boto3.client(
        "dynamodb", endpoint_url=f"http://127.0.0.1:{ports[2]}", region_name="us-east-1",
        aws_access_key_id="test", aws_secret_access_key="test",
    )
    aws.put_item(TableName="dit4c-test-ClustersTable",
                 Item={"cluster_id": {"S": "made-before-the-restart"}})
    aws.close()
    child_pids = [json.loads(p.read_text())["pid"] for p in (data_dir / "run").glob("*.pid")]
    password = (data_dir / "admin-password").read_text().strip()

    took = running.interrupt()

    assert running.process.returncode == 0, running.output()
    assert not [p for p in ports if _listening(p)], "something still listens"
    assert not [p for p in child_pids if _alive(p)], "a child process survived"
    assert "stopped in" in "\n".join(running.lines)
    print(f"stopped in {took:.1f} s")

    again = StackProcess(stack_env)
    try:
        again.wait_ready()
        assert f"admin / {password}" in "\n".join(again.lines)
        aws = boto3.client(
            "dynamodb", endpoint_url=f"http://127.0.0.1:{ports[2]}", region_name="us-east-1",
            aws_access_key_id="test", aws_secret_access_key="test",
        )
        item = aws.get_item(TableName="dit4c-test-ClustersTable",
                            Key={"cluster_id": {"S": "made-before-the-restart"}})
        aws.close()
        assert "Item" in item
        assert _login(ports[0], password) == 200
        again.interrupt()
        assert again.process.returncode == 0
    finally:
        again.kill()
