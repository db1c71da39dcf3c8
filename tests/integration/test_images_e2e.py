"""Saved work outlives its node, as users meet it: the whole local stack (``python -m
infra.local run``: portal, real image server, exporter, node A on the machine's engine) plus a
second node daemon on the second Docker engine (node B), joined with an admin's join token.

1. alice writes a file in an instance on node A, saves it (progress, then ``saved`` with its
   size), and nothing of it is left on node A;
2. the saved image launched again lands on node B (A drained) and the file is there;
3. bob, without a share, cannot pull it (``docker pull`` with his own password is denied);
   with a share he can; after the revocation he cannot; he cannot push into alice's namespace;
4. an export link streams a tar that ``docker load`` loads and that runs;
5. node B's daemon is killed in the middle of a save and restarted: the save completes, the
   work is in the image;
6. deleting the saved image deletes its manifest, and the scheduled garbage collection frees its
   layers on disk (until then, Docker may still fetch its blobs by digest); the other saved
   image, whose layers it shared, stays whole.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest

from infra.local import registry
from infra.local.stack import REPO_ROOT
from node_daemon.pods import container_name
from protocol import pod
from protocol.registry import parse_reference
from tests.ports import free_port
from tests.support.engines import SecondEngine
from tests.support.local_stack import Browser, StackProcess, log_in

pytestmark = [pytest.mark.docker, pytest.mark.timeout(600)]

PASSWORD = "e2e-user-password"
WAIT = 120.0


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, unique_name: Callable[[str], str],
          run_labels: dict[str, str], tool_image: str, helpers_image: str
          ) -> Iterator[dict[str, Any]]:
    if registry.binary() is None:
        pytest.skip("docker-registry is not installed (make deps installs it)")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "DIT4C_"))}
    ports = {name: free_port() for name in ("PORTAL", "ROUTER", "AWS", "REGISTRY", "EXPORT")}
    env.update({f"DIT4C_{name}_PORT": str(port) for name, port in ports.items()})
    env.update({
        "DIT4C_DATA_DIR": str(tmp_path_factory.mktemp("images-e2e") / "data"),
        "DIT4C_STACK_NAME": "dit4c-images",
        "DIT4C_PUBLISH_HELPERS": "0",  # only test_home_node needs it
        "DIT4C_ADMIN_PASSWORD": "admin-images-password",
        "DIT4C_NODE_PODS_NETWORK": unique_name("img-pods"),
        "DIT4C_NODE_LABELS": ",".join(f"{k}={v}" for k, v in run_labels.items()),
        "DIT4C_NODE_METRICS_LISTEN": "127.0.0.1:0",
        "DIT4C_NODE_HEARTBEAT_SECONDS": "2",
        "DIT4C_NODE_RECONCILE_SECONDS": "3",
        "DIT4C_REGISTRY_GC_SECONDS": "5",
        "DIT4C_NODE_HELPERS_IMAGE": helpers_image,
    })
    process = StackProcess(env)
    try:
        process.wait_ready()
        admin = Browser()
        assert log_in(admin, ports["PORTAL"], "admin", env["DIT4C_ADMIN_PASSWORD"]) == 200
        yield {"env": env, "ports": ports, "process": process, "admin": admin,
               "portal": f"http://localhost:{ports['PORTAL']}",
               "registry": f"127.0.0.1:{ports['REGISTRY']}",
               "data": Path(env["DIT4C_DATA_DIR"])}
    finally:
        process.kill()


def call(browser: Browser, stack: dict[str, Any], method: str, path: str, body: Any = None,
         *, expect: int | tuple[int, ...] = 200) -> Any:
    status, _, content = browser.request(f"{stack['portal']}{path}", method, body)
    expected = (expect,) if isinstance(expect, int) else expect
    assert status in expected, (method, path, status, content[:500])
    return json.loads(content) if content else None


@pytest.fixture(scope="module")
def users(stack: dict[str, Any]) -> dict[str, Browser]:
    browsers = {}
    for name in ("alice", "bob"):
        call(stack["admin"], stack, "POST", "/api/users", {"username": name,
                                                           "password": PASSWORD}, expect=201)
        browsers[name] = Browser()
        assert log_in(browsers[name], stack["ports"]["PORTAL"], name, PASSWORD) == 200
    return browsers


class NodeB:
    """``python -m node_daemon`` on the second engine, joined to the stack's portal."""

    def __init__(self, stack: dict[str, Any], engine: SecondEngine, data: Path,
                 network: str, labels: dict[str, str]) -> None:
        self.env = {**{k: v for k, v in os.environ.items() if not k.startswith("DIT4C_")},
                    **engine.env(), "PYTHONPATH": str(REPO_ROOT),
                    "DIT4C_NODE_PODS_NETWORK": network,
                    "DIT4C_NODE_LABELS": ",".join(f"{k}={v}" for k, v in labels.items()),
                    "DIT4C_NODE_METRICS_LISTEN": "127.0.0.1:0",
                    "DIT4C_NODE_HEARTBEAT_SECONDS": "2", "DIT4C_NODE_RECONCILE_SECONDS": "3",
                    # Its pods reach the stack on this host as a home node's reach a
                    # deployment: router, portal, S3 and the image server only.
                    "DIT4C_NODE_POD_HOST_PORTS": ",".join(
                        str(stack["ports"][name])
                        for name in ("ROUTER", "PORTAL", "AWS", "REGISTRY"))}
        self.engine = engine
        self.data = data
        self.log = data.with_suffix(".log")
        token = call(stack["admin"], stack, "POST", "/api/clusters/default/join-tokens",
                     None, expect=201)["token"]
        joined = subprocess.run(
            [sys.executable, "-m", "node_daemon", "join", "--portal",
             f"http://127.0.0.1:{stack['ports']['PORTAL']}", "--token", token, "--data-dir",
             str(data), "--name", "node-b", "--memory-mb", "4096"],
            env=self.env, capture_output=True, text=True, timeout=60, check=False)
        assert joined.returncode == 0, joined.stderr
        self.node_id = json.loads((data / "node.json").read_text())["node_id"]
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as output:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "node_daemon", "run", "--data-dir", str(self.data)],
                env=self.env, stdout=output, stderr=subprocess.STDOUT)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""


@pytest.fixture(scope="module")
def node_b(stack: dict[str, Any], second_engine: SecondEngine,
           tmp_path_factory: pytest.TempPathFactory, unique_name: Callable[[str], str],
           run_labels: dict[str, str]) -> Iterator[NodeB]:
    node = NodeB(stack, second_engine, tmp_path_factory.mktemp("node-b") / "data",
                 unique_name("img-pods-b"), run_labels)
    node.start()
    try:
        wait(lambda: any(n["id"] == node.node_id and n["heartbeat_age_seconds"] is not None
                         for n in call(stack["admin"], stack, "GET",
                                       "/api/clusters/default/nodes")["nodes"]),
             "node B's first heartbeat", node)
        yield node
    finally:
        node.kill()


def wait(predicate: Callable[[], Any], what: str, node: NodeB | None = None,
         timeout: float = WAIT) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}" +
                                 (f"\n--- node B log ---\n{node.tail()}" if node else ""))
        time.sleep(0.3)
    return result


def instance(user: Browser, stack: dict[str, Any], iid: str) -> dict[str, Any]:
    result: dict[str, Any] = call(user, stack, "GET", f"/api/instances/{iid}")
    return result


def wait_state(user: Browser, stack: dict[str, Any], iid: str, state: str,
               node: NodeB | None = None) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        got = instance(user, stack, iid)
        assert got["state"] != "failed", got
        if got["state"] == "stopped" and state == "saved":
            raise AssertionError(f"the save failed: {got['reason']}")
        return got if got["state"] == state else None

    result = wait(reached, f"{iid} {state}", node)
    assert isinstance(result, dict)
    return result


def launch(user: Browser, stack: dict[str, Any], image_id: str) -> str:
    iid: str = call(user, stack, "POST", "/api/instances", {"image_id": image_id},
                    expect=202)["id"]
    return iid


def schedule_on(stack: dict[str, Any], node_id: str) -> None:
    """Only ``node_id`` takes new instances (the others drained)."""
    for node in call(stack["admin"], stack, "GET", "/api/clusters/default/nodes")["nodes"]:
        action = "activate" if node["id"] == node_id else "drain"
        call(stack["admin"], stack, "POST", f"/api/nodes/{node['id']}/{action}")


def stack_node_id(stack: dict[str, Any]) -> str:
    return str(json.loads((stack["data"] / "node" / "node.json").read_text())["node_id"])


def exec_in(client: docker.DockerClient, iid: str, command: str) -> str:
    tool = client.containers.get(container_name(iid, pod.ROLE_TOOL))
    code, out = tool.exec_run(["sh", "-c", command])
    assert code == 0, out
    return str(out.decode().strip())


def save_and_wait(user: Browser, stack: dict[str, Any], iid: str, node: NodeB | None = None
                  ) -> dict[str, Any]:
    call(user, stack, "POST", f"/api/instances/{iid}/stop", None, expect=202)
    wait_state(user, stack, iid, "stopped", node)
    call(user, stack, "POST", f"/api/instances/{iid}/save", None, expect=202)
    done = wait_state(user, stack, iid, "saved", node)
    images: list[dict[str, Any]] = call(user, stack, "GET", "/api/images")["images"]
    (image,) = [i for i in images if i["id"] == done["saved_image_id"]]
    return image


def pull_as(client: docker.DockerClient, reference: str, username: str) -> str | None:
    """``docker pull`` with ``username``'s own password (the engine asks the portal's token
    service, Docker's token protocol; the registry decides): None if it worked, else the
    engine's error."""
    ref = parse_reference(reference)
    deadline = time.monotonic() + 20
    while True:
        try:
            events = list(client.api.pull(f"{ref.registry}/{ref.repository}", tag=ref.digest,
                                          stream=True, decode=True, auth_config={
                                              "username": username, "password": PASSWORD}))
            errors = [str(e["error"]) for e in events if "error" in e]
        except docker.errors.APIError as exc:  # refused before the pull began
            errors = [str(exc)]
        # The scheduled garbage collection restarts the image server (about a second).
        if not (errors and "connection refused" in errors[-1]) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    if errors:
        return errors[-1]
    client.images.remove(reference)
    return None


def denied(error: str | None) -> bool:
    return error is not None and "denied" in error


def test_saved_work_outlives_its_node(stack: dict[str, Any], users: dict[str, Browser],
                                      node_b: NodeB, docker_client: docker.DockerClient,
                                      run_labels: dict[str, str]):
    alice = users["alice"]
    second_engine = node_b.engine
    node_a = stack_node_id(stack)
    catalog = next(i["id"] for i in call(alice, stack, "GET", "/api/images")["images"]
                   if i["kind"] == "catalog")

    # 1. work on node A, saved
    schedule_on(stack, node_a)
    iid = launch(alice, stack, catalog)
    assert wait_state(alice, stack, iid, "running")["node_id"] == node_a
    exec_in(docker_client, iid, "echo written-on-node-a > /work.txt")
    image = save_and_wait(alice, stack, iid)
    assert image["size"] > 0 and image["source_instance"] == iid and image["created_at"]
    assert not docker_client.containers.list(
        all=True, filters={"label": f"{pod.LABEL_INSTANCE}={iid}"})

    # 2. launched again: lands on node B, the file is there
    schedule_on(stack, node_b.node_id)
    derived = launch(alice, stack, image["id"])
    got = wait_state(alice, stack, derived, "running", node_b)
    assert got["node_id"] == node_b.node_id
    assert exec_in(second_engine.client, derived, "cat /work.txt") == "written-on-node-a"
    # more work on node B, enough for its save to take a moment
    exec_in(second_engine.client, derived,
            "head -c 80m /dev/urandom > /more.bin && echo second-save >> /work.txt")

    # 3. bob: no pull without a share; with one, yes; revoked, no; never a push into alice's
    assert denied(pull_as(docker_client, image["image"], "bob"))
    call(alice, stack, "POST", f"/api/images/{image['id']}/share", {"username": "bob"})
    assert pull_as(docker_client, image["image"], "bob") is None
    call(alice, stack, "POST", f"/api/images/{image['id']}/share",
         {"username": "bob", "revoke": True})
    assert denied(pull_as(docker_client, image["image"], "bob"))
    target = f"{stack['registry']}/users/alice/planted"
    docker_client.images.get("dit4c/test-tool:busybox").tag(target, "x")
    try:
        pushed = list(docker_client.api.push(target, tag="x", stream=True, decode=True,
                                             auth_config={"username": "bob",
                                                          "password": PASSWORD}))
        assert any("denied" in str(e.get("error", "")) for e in pushed), pushed
    finally:
        docker_client.images.remove(f"{target}:x")

    # 4. export: a docker save tar, loaded and run
    link = call(alice, stack, "POST", f"/api/images/{image['id']}/export")
    local = link["url"].replace("localhost", "127.0.0.1", 1)
    with urllib.request.urlopen(local, timeout=60) as response:  # noqa: S310 - the exporter
        tar = response.read()
    loaded = docker_client.images.load(tar)
    tags = [t for i in loaded for t in i.tags]
    try:
        out = docker_client.containers.run(tags[0], ["cat", "/work.txt"], remove=True,
                                           labels=run_labels)
        assert out.decode().strip() == "written-on-node-a"
    finally:
        for tag in tags:
            docker_client.images.remove(tag)

    # 5. node B killed mid-save, restarted: the save completes with the work in it
    call(alice, stack, "POST", f"/api/instances/{derived}/stop", None, expect=202)
    wait_state(alice, stack, derived, "stopped", node_b)
    call(alice, stack, "POST", f"/api/instances/{derived}/save", None, expect=202)
    # killed once the node has reported upload progress: in the middle of the push
    wait(lambda: 0 < instance(alice, stack, derived)["progress"].get("save", 0) < 100,
         "the save's progress", node_b)
    node_b.kill()
    node_b.start()
    done = wait_state(alice, stack, derived, "saved", node_b)
    (second,) = [i for i in call(alice, stack, "GET", "/api/images")["images"]
                 if i["id"] == done["saved_image_id"]]
    ref = parse_reference(second["image"])
    docker_client.images.pull(f"{ref.registry}/{ref.repository}", tag=ref.digest,
                              auth_config={"username": "alice", "password": PASSWORD})
    try:
        out = docker_client.containers.run(second["image"], ["cat", "/work.txt"],
                                           remove=True, labels=run_labels)
        assert out.decode().split() == ["written-on-node-a", "second-save"]
    finally:
        docker_client.images.remove(second["image"])
    assert not second_engine.client.containers.list(
        all=True, filters={"label": f"{pod.LABEL_INSTANCE}={derived}"})

    # 6. delete: the manifest goes at once, the layers at the next garbage collection
    blobs = stack["data"] / "registry" / "data" / "docker" / "registry" / "v2" / "blobs"
    before = _size(blobs)
    call(alice, stack, "DELETE", f"/api/images/{second['id']}", None, expect=204)
    assert second["id"] not in [i["id"] for i in call(alice, stack, "GET", "/api/images")[
        "images"]]
    wait(lambda: _size(blobs) < before - 50 * (1 << 20), "the garbage collection",
         timeout=60)
    assert "manifest unknown" in str(pull_as(docker_client, second["image"], "alice"))
    # the first saved image, which shares layers with it, is whole
    assert pull_as(docker_client, image["image"], "alice") is None


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) \
        if folder.exists() else 0


def test_the_ready_block_and_health_name_the_image_server(stack: dict[str, Any]):
    block = "\n".join(stack["process"].lines)
    assert f"images:     {stack['registry']}" in block
    assert f"exports:    http://localhost:{stack['ports']['EXPORT']}" in block
    health = call(Browser(), stack, "GET", "/api/health")
    assert health["registry"] == stack["registry"]
    assert health["dependencies"]["image_server"] == "ok"

