"""The node daemon deployed as a container (docs/node-daemon.md, "As a container"): the image
``make images`` builds (``dit4c/node:dev``: the node wheel in a virtualenv on the helper base),
the engine's socket mounted, a data volume, the host's network; it runs pods, SIGTERM stops it
and leaves them running, and a new container adopts them."""

from __future__ import annotations

import os
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from protocol import pod
from protocol.messages import DiscardInstance
from tests.support.control_plane import ControlPlane, control_plane
from tests.support.node import (
    EventLog,
    NodeProcess,
    sample_start,
)

pytestmark = [pytest.mark.docker]

SOCKET = "/var/run/docker.sock"


@pytest.fixture
def portal() -> Iterator[ControlPlane]:
    # The stopped daemon's last long poll may take a message; it comes back after this.
    with control_plane(visibility_timeout=5) as plane:
        yield plane


@pytest.mark.timeout(180)
def test_the_daemon_runs_as_a_container_with_the_socket_mounted(  # noqa: PLR0917 - fixtures
        tmp_path: Path, portal: ControlPlane, docker_client: docker.DockerClient,
        node_settings: dict[str, str], tool_image: str, node_image: str):
    if os.environ.get("DOCKER_HOST", f"unix://{SOCKET}") != f"unix://{SOCKET}":
        pytest.skip("the engine is not on the default socket")
    client = docker_client
    joined = NodeProcess(portal, tmp_path / "node", node_settings)
    joined.join()

    def run_container() -> docker.models.containers.Container:
        return client.containers.run(
            node_image, ["run"], detach=True,
            name=f"dit4c-test-node-{uuid.uuid4().hex[:8]}", network_mode="host",
            labels=dict(settings_labels(node_settings)),
            volumes={SOCKET: {"bind": SOCKET, "mode": "rw"},
                     str(joined.data_dir): {"bind": "/var/lib/dit4c-node", "mode": "rw"}},
            environment={**{k: v for k, v in node_settings.items() if k.startswith("DIT4C_")},
                         # The host's network: never the default port another node may hold.
                         "DIT4C_NODE_METRICS_LISTEN": "127.0.0.1:0",
                         "DIT4C_NODE_DATA_DIR": "/var/lib/dit4c-node",
                         # The helper base has no iptables (docs/node-daemon.md, "As a
                         # container": NET_ADMIN and iptables, or this).
                         "DIT4C_NODE_EGRESS": "off"})

    events = EventLog(portal)
    daemon = run_container()
    iid = "c" + uuid.uuid4().hex[:12]
    try:
        joined.send(sample_start(iid, tool_image))
        try:
            events.wait_state(iid, "running", 90)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{daemon.logs().decode()[-6000:]}") from None
        # Its metrics are on the host's loopback.
        address = (joined.data_dir / "metrics-address").read_text()
        with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as answer:
            assert 'dit4c_node_pods{state="running"} 1.0' in answer.read().decode()

        daemon.stop(timeout=30)  # SIGTERM
        assert daemon.wait(timeout=30)["StatusCode"] == 0
        pod_filter = {"label": f"{pod.LABEL_INSTANCE}={iid}"}
        # holder, listener (with the auth helper), tool
        assert len(client.containers.list(filters=pod_filter)) == 3, "pods outlive the daemon"

        replacement = run_container()  # an upgrade: a new container, the same data
        try:
            joined.send(DiscardInstance(instance_id=iid))
            events.wait_state(iid, "discarded", 60)
            assert client.containers.list(all=True, filters=pod_filter) == []
            time.sleep(0.5)
            assert [e.state for e in events.states(iid)] == ["starting", "running", "discarded"]
        finally:
            replacement.remove(force=True)
    finally:
        daemon.remove(force=True)


def settings_labels(settings: dict[str, str]) -> dict[str, str]:
    pairs = (p.split("=", 1) for p in settings["DIT4C_NODE_LABELS"].split(",") if p)
    return dict(pairs)
