"""The node daemon as a real process against the real Docker engine, moto's SQS and a fake
control plane (node_daemon.testing): pods come up, answer, stop, save, and go away; commands
are idempotent and ordered; pods are isolated from each other; the tool sees no secrets."""

from __future__ import annotations

import json
import subprocess
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import docker
import pytest

from node_daemon.network import ensure_pods_network
from node_daemon.testing import EventLog, FakePortal, MotoServer, NodeProcess, sample_start
from protocol import pod
from protocol.messages import DiscardInstance, SaveInstance, StopInstance

pytestmark = [pytest.mark.docker]

STANDIN_HELPER = ["python3", "-c", "import signal; signal.pause()"]


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    server = MotoServer()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def portal(moto: MotoServer) -> Iterator[FakePortal]:
    fake = FakePortal(moto)
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def events(portal: FakePortal) -> EventLog:
    return EventLog(portal)


@pytest.fixture(scope="module")
def pods_network(docker_client: docker.DockerClient, run_labels: dict[str, str],
                 unique_name: Callable[[str], str]) -> str:
    name = unique_name("pods")
    ensure_pods_network(docker_client, name, run_labels)
    return name  # removed with everything else labelled by this run


@pytest.fixture(scope="module")
def helper_commands(docker_client: docker.DockerClient, helpers_image: str) -> dict[str, list[str]]:
    """The real helpers once they exist in the image; until then a stand-in that stays up.

    The daemon never depends on what a helper does to call a pod running (the tool answering
    is the test), but it does report a helper that exits, so a missing module would fail every
    launch.
    """
    probe = ("import importlib.util, sys; sys.exit(0 if all(importlib.util.find_spec(m) "
             "for m in ('helpers.listener', 'helpers.auth')) else 1)")
    try:
        docker_client.containers.run(helpers_image, ["python3", "-c", probe], remove=True)
    except docker.errors.ContainerError:
        return {pod.ROLE_LISTENER: STANDIN_HELPER, pod.ROLE_AUTH: STANDIN_HELPER}
    return {}


@pytest.fixture(scope="module")
def node_env(pods_network: str, run_labels: dict[str, str],
             helper_commands: dict[str, list[str]], tool_image: str) -> dict[str, str]:
    return {"DIT4C_NODE_PODS_NETWORK": pods_network,
            "DIT4C_NODE_LABELS": ",".join(f"{k}={v}" for k, v in run_labels.items()),
            "DIT4C_NODE_HEARTBEAT_SECONDS": "2",
            "DIT4C_NODE_RECONCILE_SECONDS": "2",
            "DIT4C_NODE_LAUNCH_TIMEOUT_SECONDS": "60",
            "DIT4C_NODE_HELPER_COMMANDS": json.dumps(helper_commands)}


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, portal: FakePortal,
         node_env: dict[str, str]) -> Iterator[NodeProcess]:
    process = NodeProcess(portal, tmp_path_factory.mktemp("nodes") / "main", node_env)
    process.join()
    process.start()
    yield process
    process.stop()


def wait_state(events: EventLog, node: NodeProcess, instance_id: str, state: str,
               timeout: float = 60):
    try:
        return events.wait_state(instance_id, state, timeout)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- node log ---\n{node.log_text()[-4000:]}") from None


def pod_containers(client: docker.DockerClient, instance_id: str):
    return {c.labels[pod.LABEL_ROLE]: c for c in client.containers.list(
        all=True, filters={"label": f"{pod.LABEL_INSTANCE}={instance_id}"})}


def new_id() -> str:
    return "i" + uuid.uuid4().hex[:12]


def exec_out(container, argv: list[str]) -> tuple[int, str]:
    result = container.exec_run(argv)
    return result.exit_code, result.output.decode(errors="replace")


def test_launch_answer_stop_save_discard(docker_client, node, events, tool_image,
                                         pods_network, run_labels):
    iid = new_id()
    start = sample_start(iid, tool_image, cpu=0.5, memory_mb=96, pids_limit=64,
                         env={"TOOL_SETTING": "x"})
    node.send(start)
    wait_state(events, node, iid, "running")
    assert [e.state for e in events.states(iid)] == ["starting", "running"]

    containers = pod_containers(docker_client, iid)
    assert set(containers) == {"netns", "listener", "auth", "tool"}
    for role, container in containers.items():
        assert container.status == "running", role
        assert container.labels[pod.LABEL_NODE] == node.node_id
        assert container.labels[pod.LABEL_INSTANCE] == iid
        for key, value in run_labels.items():
            assert container.labels[key] == value
        host_config = container.attrs["HostConfig"]
        assert not host_config["PortBindings"], f"{role} publishes a host port"
        assert not host_config["Privileged"]
        assert not any("docker.sock" in b for b in host_config.get("Binds") or [])
    netns = containers["netns"]
    assert list(netns.attrs["NetworkSettings"]["Networks"]) == [pods_network]
    for role in ("listener", "auth", "tool"):
        assert containers[role].attrs["HostConfig"]["NetworkMode"] == f"container:{netns.id}"
    tool_config = containers["tool"].attrs["HostConfig"]
    assert tool_config["NanoCpus"] == 500_000_000
    assert tool_config["Memory"] == 96 * 1024 * 1024
    assert tool_config["PidsLimit"] == 64

    # The tool answers inside the pod: the auth helper's upstream, from the auth container.
    code, page = exec_out(containers["auth"], [
        "python3", "-c", "import urllib.request; print(urllib.request.urlopen("
        "'http://127.0.0.1:8080/', timeout=5).read().decode())"])
    assert code == 0, page
    assert "html" in page.lower()

    node.send(StopInstance(instance_id=iid, grace_seconds=2))
    wait_state(events, node, iid, "stopped")
    assert {c.status for c in pod_containers(docker_client, iid).values()} == {"exited"}

    saved = f"dit4c-test-saved/{iid}:v1"
    node.send(SaveInstance(instance_id=iid, image=saved))
    event = wait_state(events, node, iid, "saved")
    assert event.image == saved
    image = docker_client.images.get(saved)
    assert image.labels[pod.LABEL_INSTANCE] == iid
    for key, value in run_labels.items():
        assert image.labels[key] == value  # so the test run's cleanup removes it

    node.send(DiscardInstance(instance_id=iid))
    wait_state(events, node, iid, "discarded")
    assert pod_containers(docker_client, iid) == {}
    assert docker_client.volumes.list(filters={"label": f"{pod.LABEL_INSTANCE}={iid}"}) == []
    assert [e.state for e in events.states(iid)] == [
        "starting", "running", "stopped", "saving", "saved", "discarded"]
