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
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.local import registry
from infra.local.stack import REPO_ROOT
from scripts.images import TEST_TOOL
from tests.ports import free_port
from tests.support.local_stack import (
    STOP_DEADLINE,
    Browser,
    StackProcess,
    alive,
    children,
    get,
    launch_test_tool,
    log_in,
    port_of,
    reach,
    stack_settings,
)

pytestmark = pytest.mark.docker



@pytest.fixture(scope="module")
def stack_env(tmp_path_factory, unique_name, run_labels, docker_client, helpers_image
              ) -> dict[str, str]:
    env = stack_settings(tmp_path_factory.mktemp("local-stack") / "data", unique_name("pods"),
                         run_labels, helpers_image)
    # No compaction while a test runs: what a restart finds comes from the journal.
    env["DIT4C_SNAPSHOT_SECONDS"] = "600"
    return env


@pytest.fixture(scope="module")
def running(stack_env) -> Iterator[StackProcess]:
    stack = StackProcess(stack_env)
    try:
        stack.wait_ready()
        yield stack
    finally:
        stack.kill()


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


def test_a_launched_tool_is_reached_through_the_router_after_logging_in(running, stack_env):
    portal = port_of(stack_env, "DIT4C_PORTAL_PORT")
    router = port_of(stack_env, "DIT4C_ROUTER_PORT")
    password = (Path(stack_env["DIT4C_DATA_DIR"]) / "admin-password").read_text().strip()
    browser = Browser()
    assert log_in(browser, portal, "admin", password) == 200
    instance = launch_test_tool(browser, portal)
    assert instance["url"] == f"http://{instance['id']}.localhost:{router}"

    # The pod dials the router through the pods gateway; until its tunnel is up the router
    # answers 404 for the host, and 502 until the pod's auth helper answers.
    status, url, body = reach(browser, instance["url"] + "/")
    # Anonymous -> portal authorize (admin's session) -> callback: the auth helper redeems the
    # code at the portal through the pods gateway -> the tool.
    assert status == 200, (status, url, body[:300])
    assert b"busybox httpd is serving this page" in body
    assert url.startswith(instance["url"])


# -- stop and start again ----------------------------------------------------------------------


def _listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
    return False


def _login(port: int, password: str) -> int:
    return get(port, "/api/login", method="POST",
               body={"username": "admin", "password": password})[0]


def _push_test_tool(docker_client, registry_port: int, password: str) -> str:
    """Push the test tool to the stack's image server as the admin; returns the repository.

    Docker's own token protocol end to end: the engine meets the registry's 401, asks the
    portal's /registry/token with the admin's password (HTTP Basic), and pushes with the token.
    """
    repository = f"127.0.0.1:{registry_port}/dit4c/test-tool"
    docker_client.images.get(TEST_TOOL).tag(repository, "busybox")
    try:
        refused = list(docker_client.api.push(repository, tag="busybox", stream=True,
                                              decode=True))
        assert any("error" in line for line in refused), refused  # no token, no push
        for line in docker_client.api.push(repository, tag="busybox", stream=True, decode=True,
                                           auth_config={"username": "admin",
                                                        "password": password}):
            assert "error" not in line, line
    finally:
        docker_client.images.remove(f"{repository}:busybox")
    return "dit4c/test-tool"


def _pullable(docker_client, registry_port: int, repository: str, password: str) -> bool:
    """The admin can pull ``repository`` back (``docker pull`` with the portal's tokens)."""
    reference = f"127.0.0.1:{registry_port}/{repository}"
    docker_client.images.pull(reference, tag="busybox",
                              auth_config={"username": "admin", "password": password})
    docker_client.images.remove(f"{reference}:busybox")
    return True


def test_sigint_stops_everything_and_a_restart_keeps_the_data(running, stack_env, docker_client):
    data_dir = Path(stack_env["DIT4C_DATA_DIR"])
    portal, router, aws_port = (
        port_of(stack_env, n)
        for n in ("DIT4C_PORTAL_PORT", "DIT4C_ROUTER_PORT", "DIT4C_AWS_PORT")
    )
    password = (data_dir / "admin-password").read_text().strip()
    admin = Browser()
    assert log_in(admin, portal, "admin", password) == 200
    status, _, body = admin.request(
        f"http://localhost:{portal}/api/users", "POST",
        {"username": "alice", "password": "alice-password-1"},
    )
    assert status == 201, body
    instance = launch_test_tool(admin, portal)
    registry_port = port_of(stack_env, "DIT4C_REGISTRY_PORT")
    pushed = _push_test_tool(docker_client, registry_port, password) \
        if registry.binary() else None
    child_pids = [json.loads(p.read_text())["pid"] for p in (data_dir / "run").glob("*.pid")]
    # edge router, node daemon, and when docker-registry is installed the image server (on
    # loopback and on the pods gateway) with its exporter
    assert len(child_pids) == (5 if registry.binary() else 2)

    took = running.interrupt()

    assert running.process.returncode == 0, running.output()
    assert not [p for p in (portal, router, aws_port, registry_port) if _listening(p)], (
        "something still listens"
    )
    assert not [p for p in child_pids if alive(p)], "a child process survived"
    assert "stopped in" in "\n".join(running.lines)
    print(f"stopped in {took:.1f} s")

    again = StackProcess(stack_env)
    try:
        again.wait_ready()
        assert f"admin / {password}" in "\n".join(again.lines)
        assert log_in(Browser(), portal, "alice", "alice-password-1") == 200
        admin = Browser()
        assert log_in(admin, portal, "admin", password) == 200
        status, _, body = admin.request(f"http://localhost:{portal}/api/instances")
        assert status == 200, body
        listed = {i["id"]: i for i in json.loads(body)["instances"]}
        assert instance["id"] in listed
        assert listed[instance["id"]]["state"] == "running"
        if pushed is not None:  # the same storage and the same token CA after a restart
            assert _pullable(docker_client, registry_port, pushed, password)
        again.interrupt(signal.SIGTERM)
        assert again.process.returncode == 0, again.output()
    finally:
        again.kill()


def test_a_child_that_dies_stops_the_stack_with_its_log(stack_env):
    data_dir = Path(stack_env["DIT4C_DATA_DIR"])
    stack = StackProcess(stack_env)
    try:
        stack.wait_ready()
        router = children(data_dir)["edge-router"]
        os.kill(router, signal.SIGKILL)
        stack.process.wait(STOP_DEADLINE + 5)
        assert stack.process.returncode == 1
        errors = "\n".join(stack.errors)
        assert f"edge-router exited unexpectedly with status {-signal.SIGKILL}" in errors
        assert "edge-router.log" in errors
        ports = [port_of(stack_env, n) for n in ("DIT4C_PORTAL_PORT", "DIT4C_AWS_PORT")]
        assert not [p for p in ports if _listening(p)]
        assert children(data_dir) == {}
    finally:
        stack.kill()


def test_a_killed_stack_keeps_what_it_acknowledged_and_the_next_start_stops_its_leftovers(
    stack_env,
):
    """Issue 15 as a user met it: a user made and a tool launched, then the stack is killed
    (SIGKILL: no last snapshot, no clean-up; its children live on) moments after its answers.
    The next start has the user and the instance, running and reachable again by its owner."""
    data_dir = Path(stack_env["DIT4C_DATA_DIR"])
    portal = port_of(stack_env, "DIT4C_PORTAL_PORT")
    password = (data_dir / "admin-password").read_text().strip()
    killed = StackProcess(stack_env)
    try:
        killed.wait_ready()
        admin = Browser()
        assert log_in(admin, portal, "admin", password) == 200
        status, _, body = admin.request(
            f"http://localhost:{portal}/api/users", "POST",
            {"username": "dave", "password": "dave-password-1"},
        )
        assert status == 201, body
        instance = launch_test_tool(admin, portal)
        orphans = children(data_dir)
        killed.process.kill()  # at once: within the snapshot interval of the old stack
        killed.process.wait(10)
        assert all(alive(pid) for pid in orphans.values())
    finally:
        killed.kill()

    again = StackProcess(stack_env)
    try:
        again.wait_ready()
        said = "\n".join(again.lines)
        for name in orphans:
            assert f"stopped {name} left running by an earlier stack" in said
        assert not [pid for pid in orphans.values() if alive(pid)]
        assert "warning" not in said, said
        assert log_in(Browser(), portal, "alice", "alice-password-1") == 200
        assert log_in(Browser(), portal, "dave", "dave-password-1") == 200
        assert f"admin / {password}" in said
        admin = Browser()
        assert log_in(admin, portal, "admin", password) == 200
        status, _, body = admin.request(f"http://localhost:{portal}/api/instances/"
                                        f"{instance['id']}")
        assert status == 200, body
        assert json.loads(body)["state"] == "running"
        started = time.monotonic()
        status, url, body = reach(admin, instance["url"] + "/")
        assert status == 200, (status, url, body[:300])
        assert b"busybox httpd is serving this page" in body
        print(f"reached again {time.monotonic() - started:.1f} s after the stack was ready")
        again.interrupt()
        assert again.process.returncode == 0, again.output()
    finally:
        again.kill()


def test_a_pods_network_that_lets_pods_reach_each_other_is_refused(docker_network, tmp_path):
    # The fixture's network is a plain bridge: inter-container traffic on.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "DIT4C_"))}
    env.update({
        "DIT4C_DATA_DIR": str(tmp_path / "data"),
        "DIT4C_PORTAL_PORT": str(free_port()),
        "DIT4C_ROUTER_PORT": str(free_port()),
        "DIT4C_AWS_PORT": str(free_port()),
        "DIT4C_REGISTRY_PORT": str(free_port()),
        "DIT4C_NODE_PODS_NETWORK": docker_network.name,
    })
    result = subprocess.run(
        [sys.executable, "-m", "infra.local", "run"], cwd=REPO_ROOT, env=env,
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 1
    assert f"pods network {docker_network.name} (DIT4C_NODE_PODS_NETWORK)" in result.stderr
    assert "could reach each other" in result.stderr
