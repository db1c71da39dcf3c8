"""The node daemon as a real process against the real Docker engine and the real control plane
on moto (tests.support.control_plane): pods come up, answer, stop, save, and go away; commands
are idempotent and ordered; pods are isolated from each other; the tool sees no secrets."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import docker
import pytest

from node_daemon.network import ensure_pods_network
from node_daemon.pods import TOOL_CAPABILITIES
from protocol import pod
from protocol.messages import DiscardInstance, SaveInstance, StopInstance, StorageAccess
from scripts import images
from tests.ports import free_port
from tests.support.control_plane import ControlPlane, control_plane
from tests.support.node import (
    EventLog,
    NodeProcess,
    pods_s3,
    sample_start,
)

pytestmark = [pytest.mark.docker]

@pytest.fixture(scope="module")
def portal() -> Iterator[ControlPlane]:
    with control_plane() as plane:
        yield plane


@pytest.fixture(scope="module")
def pod_s3_port() -> int:
    """Where :func:`pod_s3` serves: the only port of the host the egress policy opens to this
    node's pods (node_daemon/egress.py)."""
    return free_port()


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, portal: ControlPlane,
         node_settings: dict[str, str], pod_s3_port: int) -> Iterator[NodeProcess]:
    data_dir = tmp_path_factory.mktemp("nodes") / "main"
    settings = {**node_settings, "DIT4C_NODE_POD_HOST_PORTS": str(pod_s3_port)}
    with NodeProcess(portal, data_dir, settings).running() as process:
        yield process


@pytest.fixture(scope="module")
def events(portal: ControlPlane, node: NodeProcess) -> EventLog:
    return EventLog(portal, node)


@dataclass
class Harness:
    """What most tests here need: the engine, the running node, its events, the tool image."""

    client: docker.DockerClient
    node: NodeProcess
    events: EventLog
    tool_image: str
    pods_network: str
    run_labels: dict[str, str]

    def wait_state(self, instance_id: str, state: str, timeout: float = 60):
        return self.events.wait_state(instance_id, state, timeout)

    def pod(self, instance_id: str):
        return pod_containers(self.client, instance_id)


@pytest.fixture
def h(docker_client, node, events, tool_image, run_labels) -> Harness:
    return Harness(docker_client, node, events, tool_image,
                   node.env["DIT4C_NODE_PODS_NETWORK"], run_labels)


def pod_containers(client: docker.DockerClient, instance_id: str):
    return {c.labels[pod.LABEL_ROLE]: c for c in client.containers.list(
        all=True, filters={"label": f"{pod.LABEL_INSTANCE}={instance_id}"})}


def new_id() -> str:
    return "i" + uuid.uuid4().hex[:12]


def exec_out(container, argv: list[str]) -> tuple[int, str]:
    result = container.exec_run(argv)
    return result.exit_code, result.output.decode(errors="replace")


def test_launch_answer_stop_save_discard(h: Harness):
    docker_client, node, events = h.client, h.node, h.events
    tool_image, pods_network, run_labels = h.tool_image, h.pods_network, h.run_labels
    iid = new_id()
    start = sample_start(iid, tool_image, cpu=0.5, memory_mb=96, pids_limit=64,
                         env={"TOOL_SETTING": "x"})
    node.send(start)
    events.wait_state(iid, "running")
    assert [e.state for e in events.states(iid)] == ["starting", "running"]

    containers = pod_containers(docker_client, iid)
    assert set(containers) == {"netns", "listener", "tool"}
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
    # The host as the pods bridge's gateway (where the local stack listens), not docker0.
    gateway = ensure_pods_network(docker_client, pods_network)
    assert netns.attrs["HostConfig"]["ExtraHosts"] == [f"host.docker.internal:{gateway}"]
    code, hosts = exec_out(containers["tool"], ["cat", "/etc/hosts"])
    assert "host.docker.internal" in hosts  # the joined containers share the holder's hosts
    for role in ("listener", "tool"):
        assert containers[role].attrs["HostConfig"]["NetworkMode"] == f"container:{netns.id}"
    tool_config = containers["tool"].attrs["HostConfig"]
    assert tool_config["NanoCpus"] == 500_000_000
    assert tool_config["Memory"] == 96 * 1024 * 1024
    assert tool_config["PidsLimit"] == 64

    # The tool answers inside the pod: the auth helper's upstream, from the listener's container.
    code, page = exec_out(containers["listener"], [
        "python3", "-c", "import urllib.request; print(urllib.request.urlopen("
        "'http://127.0.0.1:8080/', timeout=5).read().decode())"])
    assert code == 0, page
    assert "html" in page.lower()

    node.send(StopInstance(instance_id=iid, grace_seconds=2))
    events.wait_state(iid, "stopped")
    assert {c.status for c in pod_containers(docker_client, iid).values()} == {"exited"}

    saved = f"dit4c-test-saved/{iid}:v1"
    node.send(SaveInstance(instance_id=iid, image=saved))
    event = events.wait_state(iid, "saved")
    assert event.image == saved
    image = docker_client.images.get(saved)
    assert image.labels[pod.LABEL_INSTANCE] == iid
    for key, value in run_labels.items():
        assert image.labels[key] == value  # so the test run's cleanup removes it

    node.send(DiscardInstance(instance_id=iid))
    events.wait_state(iid, "discarded")
    assert pod_containers(docker_client, iid) == {}
    assert docker_client.volumes.list(filters={"label": f"{pod.LABEL_INSTANCE}={iid}"}) == []
    assert [e.state for e in events.states(iid)] == [
        "starting", "running", "stopped", "saving", "saved", "discarded"]


def wait_drained(h: Harness, timeout: float = 30) -> None:
    """Until the node's queue holds nothing, visible or in flight: every command handled."""
    url = h.node.portal.queue_url(h.node.node_id)
    deadline = time.monotonic() + timeout
    names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    while True:
        attrs = h.node.portal.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=names)
        if all(attrs["Attributes"][n] == "0" for n in names):
            return
        assert time.monotonic() < deadline, f"queue not drained: {attrs['Attributes']}"
        time.sleep(0.2)


def http_get_from(container, address: str) -> str:
    """An HTTP request from inside ``container`` (busybox nc: its static wget crashes)."""
    _, out = exec_out(container, ["sh", "-c", "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | "
                                  f"nc -w 3 {address} 8080"])
    return out


def test_duplicate_start_makes_one_pod(h: Harness):
    iid = new_id()
    start = sample_start(iid, h.tool_image)
    h.node.send(start)
    h.node.send(start)  # SQS delivering twice
    h.node.send(sample_start(iid, h.tool_image))  # the control plane re-sending
    h.wait_state(iid, "running")
    wait_drained(h)
    assert sorted(h.pod(iid)) == ["listener", "netns", "tool"]
    assert [e.state for e in h.events.states(iid)] == ["starting", "running"]
    h.node.send(DiscardInstance(instance_id=iid))
    h.wait_state(iid, "discarded")


def test_stop_before_start_and_commands_after_discard(h: Harness):
    early = new_id()
    h.node.send(StopInstance(instance_id=early))
    h.wait_state(early, "stopped")
    h.node.send(sample_start(early, h.tool_image))  # overtaken by its stop: never runs
    late = new_id()
    late_start = sample_start(late, h.tool_image)
    h.node.send(late_start)
    h.wait_state(late, "running")
    stale_discard = DiscardInstance(instance_id=late, sent_at=late_start.sent_at)
    h.node.send(DiscardInstance(instance_id=late))
    h.wait_state(late, "discarded")
    h.node.send(StopInstance(instance_id=late))
    h.node.send(late_start)  # redelivered: sent before the discard, never runs again
    wait_drained(h)
    h.events.poll()
    assert h.pod(early) == {}
    assert h.pod(late) == {}
    assert [e.state for e in h.events.states(early)] == ["stopped"]
    assert [e.state for e in h.events.states(late)] == ["starting", "running", "discarded"]
    # A start sent after the discard is the instance placed here anew (the reaper re-placing
    # it where it was): it runs, and a discard older than it does not touch it.
    def reported(state: str, times: int) -> None:
        h.events.wait_for(lambda: [e.state for e in h.events.states(late)].count(state) == times,
                          60, f"{late} -> {state} ({times})")

    h.node.send(sample_start(late, h.tool_image))
    reported("running", 2)
    h.node.send(stale_discard)
    wait_drained(h)
    h.events.poll()
    assert sorted(h.pod(late)) == ["listener", "netns", "tool"]
    assert [e.state for e in h.events.states(late)][-1] == "running"
    h.node.send(DiscardInstance(instance_id=late))
    reported("discarded", 2)
    assert h.pod(late) == {}


def test_start_without_room_fails_with_reason(h: Harness):
    iid = new_id()
    h.node.send(sample_start(iid, h.tool_image, memory_mb=10 * h.node.memory_mb))
    event = h.wait_state(iid, "failed")
    assert "no room" in (event.reason or "")
    assert h.pod(iid) == {}


def test_missing_image_fails_with_reason(h: Harness):
    iid = new_id()
    h.node.send(sample_start(iid, f"dit4c-test-absent/{iid}:none"))
    event = h.wait_state(iid, "failed")
    assert "pulling" in (event.reason or ""), event.reason
    assert h.pod(iid) == {}


def test_pods_cannot_reach_each_other(h: Harness):
    first, second = new_id(), new_id()
    for iid in (first, second):
        h.node.send(sample_start(iid, h.tool_image))
    for iid in (first, second):
        h.wait_state(iid, "running")
    netns = h.pod(second)["netns"]
    address = netns.attrs["NetworkSettings"]["Networks"][h.pods_network]["IPAddress"]
    # Control: the second pod's tool does answer at that address (from the host).
    with urllib.request.urlopen(f"http://{address}:8080/", timeout=5) as answer:
        assert answer.status == 200
    tool = h.pod(first)["tool"]
    assert "HTTP/1.1 200" in http_get_from(tool, "127.0.0.1"), "a pod reaches its own tool"
    # The attack: the first pod's tool asks for the second pod's page.
    answer = http_get_from(tool, address)
    assert "HTTP/" not in answer, f"pod {first} reached pod {second}: {answer}"
    for iid in (first, second):
        h.node.send(DiscardInstance(instance_id=iid))


def test_tool_sees_no_helper_secrets(h: Harness):
    iid = new_id()
    start = sample_start(iid, h.tool_image, env={"TOOL_ONLY": "yes"})
    h.node.send(start)
    h.wait_state(iid, "running")
    containers = h.pod(iid)
    secrets = [start.tunnel_token, start.oauth.client_secret]

    def config_env(role: str) -> str:
        return "\n".join(containers[role].attrs["Config"]["Env"] or [])

    # The attack: read every environment the tool can see, and look for the Docker socket.
    code, seen = exec_out(containers["tool"], ["sh", "-c", "env; cat /proc/*/environ"])
    assert "TOOL_ONLY=yes" in seen
    for secret in secrets:
        assert secret not in seen
        assert secret not in config_env("tool")
    code, _ = exec_out(containers["tool"], ["ls", "/var/run/docker.sock"])
    assert code != 0
    # The listener (it runs the auth helper) got both over its bind, in no configuration:
    # it dialled the router with the token (its log says so without the token).
    for secret in secrets:
        assert secret not in config_env("listener")
        assert secret not in config_env("netns")
    logs = containers["listener"].logs().decode(errors="replace")
    assert f"listener for {start.hostname}" in logs
    for secret in secrets:
        assert secret not in logs
    h.node.send(DiscardInstance(instance_id=iid))


def test_helper_exit_is_reported(h: Harness):
    iid = new_id()
    h.node.send(sample_start(iid, h.tool_image))
    h.wait_state(iid, "running")
    h.pod(iid)["listener"].kill()
    event = h.wait_state(iid, "failed", timeout=30)  # the reconcile timer notices
    assert "listener helper exited" in (event.reason or ""), event.reason
    h.node.send(DiscardInstance(instance_id=iid))
    h.wait_state(iid, "discarded")
    assert h.pod(iid) == {}


def test_bad_commands_are_kept_and_dropped(h: Harness):
    url = h.node.portal.queue_url(h.node.node_id)
    h.node.portal.sqs.send_message(QueueUrl=url, MessageBody="not json")
    bad = sample_start("../escape", h.tool_image)
    h.node.portal.sqs.send_message(QueueUrl=url, MessageBody=bad.encode())
    wait_drained(h)
    kept = sorted(p.read_text() for p in (h.node.data_dir / "rejected").iterdir())
    assert "not json" in kept
    assert any("../escape" in body for body in kept)
    assert "rejected command" in h.node.log_text()


def test_heartbeats_and_metrics(h: Harness):
    iid = new_id()
    h.node.send(sample_start(iid, h.tool_image))
    h.wait_state(iid, "running")
    h.events.wait_for(lambda: any(iid in b.running for b in h.events.heartbeats()), 15,
                      "a heartbeat naming the running instance")
    beat = next(b for b in h.events.heartbeats() if iid in b.running)
    assert beat.node_id == h.node.node_id
    assert beat.cpu_total == h.node.cpu
    assert beat.memory_mb_total == h.node.memory_mb
    assert beat.cpu_used >= 0.5
    assert beat.version
    address = (h.node.data_dir / "metrics-address").read_text()
    assert address.startswith("127.0.0.1:")
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    assert 'dit4c_node_pods{state="running"}' in text
    assert 'dit4c_node_launches_total{result="running"}' in text
    assert "dit4c_node_launch_seconds_bucket" in text
    assert "dit4c_node_queue_poll_errors_total 0.0" in text
    h.node.send(DiscardInstance(instance_id=iid))


def test_a_tool_that_exits_fails_the_launch_with_its_reason(h: Harness):
    iid = new_id()
    # The helper base image's command is a bare `python3`: with no input it exits at once.
    h.node.send(sample_start(iid, images.HELPER_BASE))
    event = h.wait_state(iid, "failed")
    assert "the tool exited with code 0" in (event.reason or ""), event.reason
    # Kept, stopped, for its logs; discard removes it.
    assert {c.status for c in h.pod(iid).values()} == {"exited"}
    h.node.send(DiscardInstance(instance_id=iid))
    h.wait_state(iid, "discarded")
    assert h.pod(iid) == {}


def test_a_taken_metrics_port_is_a_clear_error(h: Harness, tmp_path):
    other = NodeProcess(h.node.portal, tmp_path / "other", h.node.env)
    other.join()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [*other.argv("run"), "--metrics-listen", f"127.0.0.1:{port}"], env=other.env,
            capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert f"cannot serve metrics on 127.0.0.1:{port}" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.fixture(scope="module")
def pod_s3(docker_client, node, pod_s3_port):
    """moto's S3 on the pods bridge's gateway (pods reach it as host.docker.internal):
    (boto3 client on the host, endpoint URL as the pod sees it)."""
    with pods_s3(docker_client, node.env["DIT4C_NODE_PODS_NETWORK"], pod_s3_port) as found:
        yield found


def test_storage_is_mounted_in_the_tool_and_keeps_its_changes(h: Harness, pod_s3):
    s3, endpoint = pod_s3
    iid = new_id()
    bucket, prefix = f"b-{iid}", f"users/{iid}/"
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key=prefix + "hello.txt", Body=b"from s3\n")
    s3.put_object(Bucket=bucket, Key=prefix + "old/gone.txt", Body=b"remove me")
    secret = f"storage-secret-{uuid.uuid4().hex}"
    start = sample_start(iid, h.tool_image, storage=StorageAccess(
        kind="s3", bucket=bucket, prefix=prefix, endpoint_url=endpoint,
        credentials={"access_key_id": "testing", "secret_access_key": secret}))
    h.node.send(start)
    h.wait_state(iid, "running")
    containers = h.pod(iid)
    assert sorted(containers) == ["listener", "netns", "storage", "tool"]
    tool = containers["tool"]
    assert exec_out(tool, ["cat", "/mnt/storage/hello.txt"]) == (0, "from s3\n")
    changes = ("echo kept > /mnt/storage/file; mkdir /mnt/storage/sub; "
               "echo deep > /mnt/storage/sub/new.txt; rm /mnt/storage/old/gone.txt")
    assert exec_out(tool, ["sh", "-c", changes]) == (0, "")
    # Any uid in the tool, private files too.
    private = tool.exec_run(["sh", "-c", "umask 077; echo mine > /mnt/storage/private.txt"],
                            user="1234")
    assert private.exit_code == 0, private.output
    # Stored at close, while the pod runs.
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    stored = {o["Key"][len(prefix):]: s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
              for o in listed}
    assert stored == {"hello.txt": b"from s3\n", "file": b"kept\n", "sub/": b"",
                      "sub/new.txt": b"deep\n", "old/": b"", "private.txt": b"mine\n"}
    helper = containers["storage"]
    # Its credentials came over the bind: in no container's configuration.
    for role in ("storage", "tool", "listener"):
        assert secret not in "\n".join(containers[role].attrs["Config"]["Env"] or [])
    assert helper.attrs["Config"]["User"] == "0"
    assert helper.attrs["HostConfig"]["CapDrop"] == ["ALL"]
    assert sorted(helper.attrs["HostConfig"]["CapAdd"]) == ["SETGID", "SETUID", "SYS_ADMIN"]
    assert "no-new-privileges" in helper.attrs["HostConfig"]["SecurityOpt"]
    # The storage gives the tool nothing: it keeps the cut set every tool has.
    assert tool.attrs["HostConfig"]["CapDrop"] == ["ALL"]
    assert sorted(tool.attrs["HostConfig"]["CapAdd"]) == sorted(TOOL_CAPABILITIES)
    assert tool.attrs["HostConfig"]["Devices"] in (None, [])
    assert not tool.attrs["HostConfig"]["Privileged"]
    # Nothing of the helper's runs privileged once mounted: the file server is uid 10001.
    code, processes = exec_out(helper, ["sh", "-c", "grep -h '^Uid:\\|^CapEff:' "
                                                    "/proc/[0-9]*/status"])
    assert code == 0 and f"Uid:\t{pod.STORAGE_UID}" in processes

    h.node.send(StopInstance(instance_id=iid, grace_seconds=10))
    h.wait_state(iid, "stopped")
    volume_filter = {"label": f"{pod.LABEL_INSTANCE}={iid}"}
    assert len(h.client.volumes.list(filters=volume_filter)) == 1
    h.node.send(DiscardInstance(instance_id=iid))
    h.wait_state(iid, "discarded")
    assert h.client.volumes.list(filters=volume_filter) == []


def test_a_helper_missing_from_the_helpers_image_fails_the_start_at_once(h: Harness,
                                                                        tmp_path):
    # As a start with storage does while the helpers image has no helpers.storage: the
    # module the storage helper would run is not in the image.
    absent = {"storage": ["python3", "-m", "helpers.no_such_helper"]}
    settings = {**h.node.env, "DIT4C_NODE_HELPER_COMMANDS": json.dumps(absent)}
    with NodeProcess(h.node.portal, tmp_path / "plain", settings).running() as plain:
        iid = new_id()
        plain.send(sample_start(iid, h.tool_image, storage=StorageAccess(
            kind="s3", bucket="b", prefix=f"users/{iid}/", credentials={})))
        failed = h.wait_state(iid, "failed")
        helpers_image = settings["DIT4C_NODE_HELPERS_IMAGE"]
        assert failed.reason == (f"the helpers image {helpers_image} has no storage helper "
                                 "(helpers.no_such_helper)")
        assert [e.state for e in h.events.states(iid)] == ["starting", "failed"]
        assert h.pod(iid) == {}  # found before anything was made
        plain.send(DiscardInstance(instance_id=iid))
        h.wait_state(iid, "discarded")
