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

from protocol import pod
from protocol.messages import DiscardInstance, SaveInstance, StopInstance
from tests.support.control_plane import ControlPlane, control_plane
from tests.support.node import (
    EventLog,
    NodeProcess,
    sample_start,
)

pytestmark = [pytest.mark.docker]

ROLES = ["listener", "netns", "tool"]


@pytest.fixture(scope="module")
def portal() -> Iterator[ControlPlane]:
    # Short-lived credentials: the daemon refreshes every few seconds, also during an outage.
    # A message a killed daemon's long poll took comes back after the visibility timeout
    # (as on SQS): keep it short so the tests need not wait the real 60 s for it.
    with control_plane(credential_seconds=36, visibility_timeout=5) as plane:
        yield plane


@pytest.fixture(scope="module")
def settings(node_settings: dict[str, str], tool_image: str) -> dict[str, str]:
    return {**node_settings, "DIT4C_NODE_RECONCILE_SECONDS": "3", "DIT4C_TOOL_IMAGE": tool_image}


@pytest.fixture
def node(tmp_path, portal: ControlPlane, settings: dict[str, str]) -> Iterator[NodeProcess]:
    with NodeProcess(portal, tmp_path / "node", settings).running() as process:
        yield process


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
def test_sigkill_at_any_moment_converges(node: NodeProcess, docker_client, portal: ControlPlane):
    events = EventLog(portal, node)
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
            with node.explaining():
                wait_until(point(iid), 60, f"{label} of {iid}")
        restart(node)
        with node.explaining(f"after a kill at {label}: "):
            events.wait_state(iid, "running", 60)

    # Converged: one whole pod per instance, nothing else of this node.
    found = node_containers(client, node.node_id)
    assert found == {iid: ROLES for iid in launched}
    for iid in launched:
        states = [c.status for c in client.containers.list(
            all=True, filters={"label": f"{pod.LABEL_INSTANCE}={iid}"})]
        assert states == ["running"] * len(ROLES), (iid, states)

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
                                                              portal: ControlPlane):
    events = EventLog(portal, node)
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
    assert len(running) == 2 * len(ROLES)

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


def metric(node: NodeProcess, line_start: str) -> float:
    """The value of the first metrics line of ``node`` that starts with ``line_start``."""
    with urllib.request.urlopen(f"http://{(node.data_dir / 'metrics-address').read_text()}"
                                "/metrics", timeout=5) as answer:
        text = answer.read().decode()
    return next(float(line.split()[-1]) for line in text.splitlines()
                if line.startswith(line_start))


def test_a_command_longer_than_the_visibility_timeout_is_handled_once(
        tmp_path, settings: dict[str, str], portal: ControlPlane):
    # A tool that never answers on the port asked for: the launch takes its whole timeout,
    # more than twice the queue's 5 s visibility timeout.
    slow = {**settings, "DIT4C_NODE_LAUNCH_TIMEOUT_SECONDS": "12"}
    with NodeProcess(portal, tmp_path / "node", slow).running() as node:
        events = EventLog(portal, node)
        iid = "v" + uuid.uuid4().hex[:12]
        node.send(sample_start(iid, node.env["DIT4C_TOOL_IMAGE"], port=9999))
        assert "did not answer within 12 s" in (events.wait_state(iid, "failed", 60).reason
                                                or "")
        time.sleep(6)  # a copy delivered again now would be seen below
        done = 'dit4c_node_messages_total{outcome="done",type="start_instance"}'
        assert metric(node, done) == 1.0
        attrs = portal.sqs.get_queue_attributes(QueueUrl=portal.queue_url(node.node_id),
                                                AttributeNames=["All"])["Attributes"]
        assert (attrs["ApproximateNumberOfMessages"],
                attrs["ApproximateNumberOfMessagesNotVisible"]) == ("0", "0")
        node.send(DiscardInstance(instance_id=iid))  # the failed pod's containers
        events.wait_state(iid, "discarded", 30)


@pytest.mark.timeout(180)
def test_outage_is_survived_with_backoff(tmp_path, settings: dict[str, str], portal: ControlPlane,
                                         docker_client):
    # Short polls, so that the outage (shorter than one 20 s poll, to keep the test short)
    # is met by several polls.
    short_polls = {**settings, "DIT4C_NODE_POLL_WAIT_SECONDS": "1"}
    with NodeProcess(portal, tmp_path / "node", short_polls).running() as node:
        _outage(node, portal, docker_client)


def _outage(node: NodeProcess, portal: ControlPlane, docker_client: docker.DockerClient) -> None:
    events = EventLog(portal, node)
    wait_until((node.data_dir / "metrics-address").exists, 30, "metrics")
    time.sleep(1)
    kept = "k" + uuid.uuid4().hex[:12]
    node.send(sample_start(kept, node.env["DIT4C_TOOL_IMAGE"]))
    events.wait_state(kept, "running", 60)
    with portal.outage():
        time.sleep(8)  # longer than the credentials' refresh margin: refreshes fail too
    assert metric(node, "dit4c_node_queue_poll_errors_total") >= 2
    # Silence is no reason to stop anything: the pod ran through the outage.
    assert "cannot ask the portal what is placed here, every pod is kept" in node.log_text()
    assert node_containers(docker_client, node.node_id).get(kept) == ROLES
    iid = "o" + uuid.uuid4().hex[:12]
    node.send(sample_start(iid, node.env["DIT4C_TOOL_IMAGE"]))
    events.wait_state(iid, "running", 60)
    log = node.log_text()
    assert "polling failed, retrying in" in log
    assert node.process is not None and node.process.poll() is None
    # Its portal's word is: the instance was deleted (the discard command never came).
    portal.services.instances.table.delete({"instance_id": kept})
    events.wait_state(kept, "discarded", 30)
    assert kept not in node_containers(docker_client, node.node_id)
    assert f"the portal has instance {kept} no longer on this node" in node.log_text()
    assert iid in node_containers(docker_client, node.node_id)
