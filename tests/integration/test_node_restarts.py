"""The node daemon killed, stopped and cut off: SIGKILL at any moment converges after a
restart, SIGTERM finishes the command in hand and leaves pods running, and an outage of the
queues and the control plane is survived with backoff."""

from __future__ import annotations

import signal
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator

import docker
import pytest

from node_daemon.network import ensure_pods_network
from node_daemon.testing import (
    EventLog,
    FakePortal,
    MotoServer,
    NodeProcess,
    helper_commands_for,
    node_env,
    sample_start,
)
from protocol import pod
from protocol.messages import DiscardInstance, SaveInstance, StopInstance

pytestmark = [pytest.mark.docker]

ROLES = ["auth", "listener", "netns", "tool"]


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    server = MotoServer()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def portal(moto: MotoServer) -> Iterator[FakePortal]:
    # Short-lived credentials: the daemon refreshes every few seconds, also during an outage.
    # A message a killed daemon's long poll took comes back after the visibility timeout
    # (as on SQS): keep it short so the tests need not wait 30 s for it.
    fake = FakePortal(moto, credential_lifetime=36, visibility_timeout=5)
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def settings(docker_client: docker.DockerClient, run_labels: dict[str, str],
             unique_name: Callable[[str], str], helpers_image: str,
             tool_image: str) -> dict[str, str]:
    network = unique_name("pods")
    ensure_pods_network(docker_client, network, run_labels)
    return node_env(pods_network=network, labels=run_labels,
                    helper_commands=helper_commands_for(docker_client, helpers_image),
                    DIT4C_NODE_RECONCILE_SECONDS="3", DIT4C_TOOL_IMAGE=tool_image)


@pytest.fixture
def node(tmp_path, portal: FakePortal, settings: dict[str, str]) -> Iterator[NodeProcess]:
    process = NodeProcess(portal, tmp_path / "node", settings)
    process.join()
    process.start()
    yield process
    process.stop()


def node_containers(client: docker.DockerClient, node_id: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    # One listing call: containers.list() inspects each and races the daemon's removals.
    for row in client.api.containers(all=True, filters={"label": f"{pod.LABEL_NODE}={node_id}"}):
        labels = row["Labels"]
        found.setdefault(labels[pod.LABEL_INSTANCE], []).append(labels[pod.LABEL_ROLE])
    return {k: sorted(v) for k, v in found.items()}


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def reported(events: EventLog, instance_id: str, state: str) -> Callable[[], bool]:
    """A predicate: the node has sent ``state`` for the instance (reads the queue each time)."""
    def check() -> bool:
        events.poll(0)
        return any(e.state == state for e in events.states(instance_id))
    return check


def restart(node: NodeProcess) -> None:
    node.signal(signal.SIGKILL)
    node.wait(10)
    node.start()


@pytest.mark.timeout(180)
def test_sigkill_at_any_moment_converges(node: NodeProcess, docker_client, portal: FakePortal):
    events = EventLog(portal)
    client = docker_client

    def has_container(iid: str) -> Callable[[], bool]:
        return lambda: iid in node_containers(client, node.node_id)

    def started(iid: str) -> Callable[[], bool]:
        return reported(events, iid, "starting")

    # Kill points along a launch: before the command is read, as soon as the pod's first
    # container exists, once part of the pod exists, and right after the launch began.
    kill_points: list[tuple[str, Callable[[str], Callable[[], bool]] | float]] = [
        ("at once", 0.0),
        ("first container", has_container),
        ("partial pod", 0.35),
        ("reported starting", started),
    ]
    launched = []
    for label, point in kill_points:
        iid = "k" + uuid.uuid4().hex[:12]
        launched.append(iid)
        node.send(sample_start(iid, node.env["DIT4C_TOOL_IMAGE"]))
        if isinstance(point, float):
            time.sleep(point)
        else:
            try:
                wait_until(point(iid), 60, f"{label} of {iid}")
            except AssertionError as exc:
                raise AssertionError(f"{exc}\n{node.log_text()[-5000:]}") from None
        restart(node)
        try:
            events.wait_state(iid, "running", 60)
        except AssertionError as exc:
            raise AssertionError(f"after a kill at {label}: {exc}\n{node.log_text()[-3000:]}") \
                from None

    # Converged: one whole pod per instance, nothing else of this node.
    found = node_containers(client, node.node_id)
    assert found == {iid: ROLES for iid in launched}
    for iid in launched:
        states = [c.status for c in client.containers.list(
            all=True, filters={"label": f"{pod.LABEL_INSTANCE}={iid}"})]
        assert states == ["running"] * 4, (iid, states)

    # Killed mid-save: the restart finishes it.
    saving = launched[0]
    node.send(StopInstance(instance_id=saving, grace_seconds=1))
    events.wait_state(saving, "stopped", 30)
    saved_as = f"dit4c-test-saved/{saving}:v1"
    node.send(SaveInstance(instance_id=saving, image=saved_as))
    wait_until(reported(events, saving, "saving"), 30, "the save to begin")
    restart(node)
    assert events.wait_state(saving, "saved", 60).image == saved_as
    assert client.images.get(saved_as).labels[pod.LABEL_INSTANCE] == saving

    # Killed mid-discard: the restart finishes it.
    for iid in launched:
        node.send(DiscardInstance(instance_id=iid))
    wait_until(lambda: len(node_containers(client, node.node_id)) < len(launched), 30,
               "a discard to begin")
    restart(node)
    for iid in launched:
        events.wait_state(iid, "discarded", 60)
    assert node_containers(client, node.node_id) == {}


def test_sigterm_finishes_the_command_in_hand_and_leaves_pods(node: NodeProcess, docker_client,
                                                              portal: FakePortal):
    events = EventLog(portal)
    first = "t" + uuid.uuid4().hex[:12]
    node.send(sample_start(first, node.env["DIT4C_TOOL_IMAGE"]))
    events.wait_state(first, "running", 60)
    before = {c.id for c in docker_client.containers.list(
        filters={"label": f"{pod.LABEL_NODE}={node.node_id}"})}

    second = "t" + uuid.uuid4().hex[:12]
    node.send(sample_start(second, node.env["DIT4C_TOOL_IMAGE"]))
    wait_until(lambda: second in node_containers(docker_client, node.node_id), 30,
               "the second launch to begin")
    began = time.monotonic()
    node.signal(signal.SIGTERM)
    assert node.wait(30) == 0
    # It did not wait for a 20 s long poll to end.
    assert time.monotonic() - began < 15
    events.wait_state(second, "running", 10)  # finished before exiting
    running = docker_client.containers.list(
        filters={"label": f"{pod.LABEL_NODE}={node.node_id}"})
    assert before <= {c.id for c in running}
    assert len(running) == 8

    # Restarted, it adopts the pods as they are: no relaunch, no new state.
    node.start()
    time.sleep(4)  # a reconcile pass
    assert {c.id for c in docker_client.containers.list(
        filters={"label": f"{pod.LABEL_NODE}={node.node_id}"})} == {c.id for c in running}
    events.poll(1)
    assert [e.state for e in events.states(first)] == ["starting", "running"]
    assert [e.state for e in events.states(second)] == ["starting", "running"]
    url = portal.queue_url(node.node_id)
    attrs = portal.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    assert attrs["ApproximateNumberOfMessages"] == "0"
    assert attrs["ApproximateNumberOfMessagesNotVisible"] == "0", "the start was not deleted"


@pytest.mark.timeout(180)
def test_outage_is_survived_with_backoff(tmp_path, settings: dict[str, str], moto: MotoServer,
                                         portal: FakePortal):
    # Short polls, so that the outage (shorter than one 20 s poll, to keep the test short)
    # is met by several polls.
    node = NodeProcess(portal, tmp_path / "node", {**settings,
                                                    "DIT4C_NODE_POLL_WAIT_SECONDS": "1"})
    node.join()
    node.start()
    try:
        _outage(node, moto, portal)
    finally:
        node.stop()


def _outage(node: NodeProcess, moto: MotoServer, portal: FakePortal) -> None:
    events = EventLog(portal)
    wait_until((node.data_dir / "metrics-address").exists, 30, "metrics")
    metrics_url = f"http://{(node.data_dir / 'metrics-address').read_text()}/metrics"
    time.sleep(1)
    moto.stop()
    portal.available = False
    try:
        time.sleep(8)  # longer than the credentials' refresh margin: refreshes fail too
    finally:
        portal.available = True
        moto.start()
    with urllib.request.urlopen(metrics_url, timeout=5) as answer:
        text = answer.read().decode()
    errors = next(float(line.split()[-1]) for line in text.splitlines()
                  if line.startswith("dit4c_node_queue_poll_errors_total"))
    assert errors >= 2
    iid = "o" + uuid.uuid4().hex[:12]
    node.send(sample_start(iid, node.env["DIT4C_TOOL_IMAGE"]))
    events.wait_state(iid, "running", 60)
    log = node.log_text()
    assert "polling failed, retrying in" in log
    assert node.process is not None and node.process.poll() is None
