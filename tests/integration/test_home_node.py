"""A node at home, for real: the local stack is the hosted deployment (portal, router, image
server with the helpers image it published at start), and a fresh Docker engine on this machine
(its own data root, exec root, socket, pidfile and bridge; no dit4c image at all) is the
self-hoster's computer.

1. An admin makes a join token on the portal's Nodes page (Chromium) and copies its command;
2. the command runs, by a shell, from a clean virtualenv that holds only the node package
   (``make dist``'s wheel, installed from local wheels), against the fresh engine;
3. the node comes online in the portal with its helpers ``ok``: it pulled the helpers image
   from the image server with its own registry token, by the digest the command pinned;
4. a user's instance of a tool the admin published on the image server runs on it (the stack's
   own node is drained) and the user reaches it through the router, logged in;
5. the node makes outbound connections only: its processes listen on loopback at most (the
   metrics endpoint) and its pods publish no port.

Not done here: a network namespace of its own for the node with only outbound NAT (the second
engine shares the host's namespace, see tests/support/engines.py); the pods still only dial out.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from infra.local import registry
from tests.ports import free_port
from tests.support.engines import SecondEngine
from tests.support.home_node import (
    ShellCommand,
    clean_env,
    listening,
    node_virtualenv,
    publish_tool,
    wait_for,
)
from tests.support.local_stack import Browser, StackProcess, log_in

playwright_sync = pytest.importorskip("playwright.sync_api")

pytestmark = [pytest.mark.docker, pytest.mark.timeout(600)]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
ADMIN_PASSWORD = "admin-home-password"
USER_PASSWORD = "carol-password-1"
TOOL_TEXT = b"busybox httpd is serving this page"
WAIT = 120.0


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, unique_name: Callable[[str], str],
          run_labels: dict[str, str], helpers_image: str) -> Iterator[dict[str, Any]]:
    if registry.binary() is None:
        pytest.skip("docker-registry is not installed (make deps installs it)")
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing (make deps installs Debian's chromium)")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "DIT4C_"))}
    ports = {name: free_port() for name in ("PORTAL", "ROUTER", "AWS", "REGISTRY", "EXPORT")}
    env.update({f"DIT4C_{name}_PORT": str(port) for name, port in ports.items()})
    env.update({
        "DIT4C_DATA_DIR": str(tmp_path_factory.mktemp("home") / "data"),
        "DIT4C_STACK_NAME": "dit4c-home",
        "DIT4C_ADMIN_PASSWORD": ADMIN_PASSWORD,
        "DIT4C_NODE_PODS_NETWORK": unique_name("home-pods"),
        "DIT4C_NODE_LABELS": ",".join(f"{k}={v}" for k, v in run_labels.items()),
        "DIT4C_NODE_METRICS_LISTEN": "127.0.0.1:0",
        "DIT4C_NODE_HEARTBEAT_SECONDS": "2",
        # Published on the image server at start: what the home node pulls.
        "DIT4C_NODE_HELPERS_IMAGE": helpers_image,
        "DIT4C_PUBLISH_HELPERS": "1",
    })
    process = StackProcess(env)
    try:
        ready = process.wait_ready()
        assert re.search(r"helpers: +127\.0\.0\.1:\d+/dit4c/helpers:\S+@sha256:", ready), ready
        admin = Browser()
        assert log_in(admin, ports["PORTAL"], "admin", ADMIN_PASSWORD) == 200
        yield {"env": env, "ports": ports, "process": process, "admin": admin,
               "portal": f"http://localhost:{ports['PORTAL']}",
               "registry": f"127.0.0.1:{ports['REGISTRY']}"}
    finally:
        process.kill()


def call(browser: Browser, stack: dict[str, Any], method: str, path: str, body: Any = None,
         *, expect: int = 200) -> Any:
    status, _, content = browser.request(f"{stack['portal']}{path}", method, body)
    assert status == expect, (method, path, status, content[:500])
    return json.loads(content) if content else None


@pytest.fixture(scope="module")
def home_engine(test_run_id: str, run_labels: dict[str, str]) -> Iterator[SecondEngine]:
    name = "h" + "".join(c for c in test_run_id.lower() if c.isalnum() and c.isascii())[:9]
    engine = SecondEngine(name, labels=run_labels).start()
    try:
        yield engine
    finally:
        engine.stop()


@pytest.fixture(scope="module")
def node_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return node_virtualenv(tmp_path_factory.mktemp("clean-node"))


def copy_join_command(stack: dict[str, Any]) -> str:
    """The admin's part, in Chromium: log in, Nodes, New join token, Copy; the clipboard."""
    with playwright_sync.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context()
            context.grant_permissions(["clipboard-read", "clipboard-write"],
                                      origin=stack["portal"])
            page = context.new_page()
            page.goto(stack["portal"] + "/")
            page.fill("#login-form input[name=username]", "admin")
            page.fill("#login-form input[name=password]", ADMIN_PASSWORD)
            page.click("#login-form button[type=submit]")
            page.wait_for_selector("#view-instances:not([hidden])", timeout=WAIT * 1000)
            page.click("#nav-nodes")
            cluster = "[data-cluster=default]"
            page.click(f"{cluster} button[data-action=new-join-token]")
            page.wait_for_selector(f"{cluster} [data-testid=join-command]")
            page.click(f"{cluster} button[data-action=copy-join-command]")
            command: str = page.evaluate("navigator.clipboard.readText()")
        finally:
            browser.close()
    return command


def nodes(stack: dict[str, Any]) -> list[dict[str, Any]]:
    listed: list[dict[str, Any]] = call(stack["admin"], stack, "GET",
                                        "/api/clusters/default/nodes")["nodes"]
    return listed


@pytest.fixture(scope="module")
def published_tool(stack: dict[str, Any], docker_client: docker.DockerClient, tool_image: str,
                   test_run_id: str) -> dict[str, Any]:
    """The catalog entry of a tool the admin pushed to the image server."""
    tool = publish_tool(docker_client, tool_image,
                        f"{stack['registry']}/tools/home-{test_run_id.lower()}:1", "admin",
                        ADMIN_PASSWORD)
    entry: dict[str, Any] = call(stack["admin"], stack, "POST", "/api/images",
                                 {"name": "home tool", "image": tool, "port": 8080}, expect=201)
    return entry


def test_a_home_machine_joins_with_the_copied_command_and_runs_a_users_tool(
        stack: dict[str, Any], home_engine: SecondEngine, node_bin: Path,
        published_tool: dict[str, Any], tmp_path: Path):
    assert home_engine.client.images.list() == []  # a machine that has never seen dit4c
    clean = node_bin.parent
    for module in ("chalice", "moto", "control_plane", "edge_router", "helpers", "pytest"):
        probe = ShellCommand(f"python -c 'import {module}'", clean_env(node_bin, tmp_path, {}),
                             tmp_path, tmp_path / "probe.log")
        assert probe.process.wait(60) != 0, f"{module} is importable in the clean virtualenv"
    assert (clean / "bin" / "dit4c-node").exists()

    command = copy_join_command(stack)
    match = re.fullmatch(rf"dit4c-node join --portal {re.escape(stack['portal'])} --token "
                         r"djt_\S+ --helpers-digest (sha256:[0-9a-f]{64}) && dit4c-node run",
                         command)
    assert match, command
    digest = match[1]

    local_node = next(n for n in nodes(stack) if n["name"] == "local")
    call(stack["admin"], stack, "POST", f"/api/nodes/{local_node['id']}/drain")
    entry = published_tool

    node_env = clean_env(node_bin, tmp_path, {
        "DOCKER_HOST": home_engine.host,
        # The run's labels (the engine carries them), so the suite's clean-up finds the pods.
        "DIT4C_NODE_LABELS": ",".join(f"{k}={v}" for k, v in home_engine.labels.items()),
        "DIT4C_NODE_METRICS_LISTEN": "127.0.0.1:0",
        "DIT4C_NODE_HEARTBEAT_SECONDS": "2",
        # Its pods reach the deployment on this host as a home node's reach it on the
        # internet: router, portal (and S3, the image server) only (the egress policy).
        "DIT4C_NODE_POD_HOST_PORTS": ",".join(
            str(stack["ports"][name]) for name in ("ROUTER", "PORTAL", "AWS", "REGISTRY")),
    })
    node = ShellCommand(command, node_env, tmp_path, tmp_path / "node.log")
    try:
        home = wait_for(lambda: next((n for n in nodes(stack) if n["id"] != local_node["id"]
                                      and n["helpers"] == "ok"
                                      and n["heartbeat_age_seconds"] is not None), None),
                        "the home node online with its helpers", WAIT, node)
        assert isinstance(home, dict) and home["state"] == "active" and home["version"]
        pulled = home_engine.client.images.get(
            f"{stack['registry']}/dit4c/helpers@{digest}").attrs["RepoDigests"]
        assert f"{stack['registry']}/dit4c/helpers@{digest}" in pulled

        carol = Browser()
        call(stack["admin"], stack, "POST", "/api/users",
             {"username": "carol", "password": USER_PASSWORD}, expect=201)
        assert log_in(carol, stack["ports"]["PORTAL"], "carol", USER_PASSWORD) == 200
        iid = call(carol, stack, "POST", "/api/instances", {"image_id": entry["id"]},
                   expect=202)["id"]

        def running() -> dict[str, Any] | None:
            got = call(carol, stack, "GET", f"/api/instances/{iid}")
            assert got["state"] != "failed", got
            return got if got["state"] == "running" else None

        instance = wait_for(running, "carol's instance running", WAIT, node)
        assert isinstance(instance, dict) and instance["node_id"] == home["id"]

        last: list[Any] = []

        def reached() -> bytes | None:
            status, url, body = carol.request(instance["url"] + "/")
            last[:] = [status, url, body[:300]]
            return body if status == 200 else None

        try:
            body = wait_for(reached, "the tool through the router", 60, node)
        except AssertionError:
            logs = {c.name: c.logs(tail=30).decode(errors="replace")
                    for c in home_engine.client.containers.list(all=True)}
            raise AssertionError(f"last answer {last}; pods' logs {logs}") from None
        assert isinstance(body, bytes) and TOOL_TEXT in body

        status = ShellCommand("dit4c-node status", node_env, tmp_path, tmp_path / "status.log")
        assert status.process.wait(60) == 0, status.tail()
        report = status.tail()
        assert "daemon:   running" in report and "1 instance(s)" in report, report
        assert f"@{digest} present" in report, report

        # Outbound only: the node's processes listen on loopback at most (metrics), and its
        # pods publish nothing on the machine.
        for address in listening(node.pids()):
            assert address.startswith(("127.0.0.1:", "[::1]:")), address
        for container in home_engine.client.containers.list():
            assert not any(container.attrs["HostConfig"].get("PortBindings") or {}), container.name
    finally:
        assert node.stop() in (0, -15), node.tail()
