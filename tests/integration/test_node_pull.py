"""An image the node does not have is pulled, with progress reported as events: the image
server is Debian's docker-registry (CNCF Distribution) on loopback."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import docker.errors
import pytest

from protocol.messages import DiscardInstance
from tests.ports import free_port
from tests.support.control_plane import control_plane
from tests.support.node import (
    EventLog,
    NodeProcess,
    sample_start,
)

pytestmark = [pytest.mark.docker]


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[str]:
    binary = shutil.which("docker-registry")
    if binary is None:
        pytest.skip("docker-registry is not installed (make deps installs it)")
    port = free_port()
    config = tmp_path / "registry.yml"
    config.write_text(
        "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n"
        f"    rootdirectory: {tmp_path / 'data'}\nhttp:\n  addr: 127.0.0.1:{port}\n")
    process = subprocess.Popen([binary, "serve", str(config)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=1):
                    break
            except OSError:
                assert time.monotonic() < deadline, "docker-registry did not start"
                time.sleep(0.1)
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(10)


@pytest.mark.timeout(180)
def test_absent_image_is_pulled_with_progress(tmp_path: Path, registry: str,
                                              docker_client: docker.DockerClient,
                                              node_settings: dict[str, str], tool_image: str):
    client = docker_client
    reference = f"{registry}/dit4c-test/tool:{uuid.uuid4().hex[:8]}"
    client.images.get(tool_image).tag(reference)
    for line in client.api.push(reference, stream=True, decode=True):
        assert "error" not in line, line
    client.images.remove(reference)  # the node must pull it
    try:
        with (control_plane() as portal,
              NodeProcess(portal, tmp_path / "node", node_settings).running() as node):
            _pull_and_discard(node, EventLog(portal, node), reference)
    finally:
        with contextlib.suppress(docker.errors.ImageNotFound):
            client.images.remove(reference, force=True)


def _pull_and_discard(node: NodeProcess, events: EventLog, reference: str) -> None:
    iid = "p" + uuid.uuid4().hex[:12]
    node.send(sample_start(iid, reference))
    events.wait_state(iid, "running", 90)
    pulls = [e.progress["pull"] for e in events.states(iid) if "pull" in e.progress]
    assert 100 in pulls, pulls  # events may arrive in any order
    assert all(e.state == "starting" for e in events.states(iid) if e.progress)
    node.send(DiscardInstance(instance_id=iid))
    events.wait_state(iid, "discarded", 30)
