"""Saving through the node daemon's own command path (``Agent.handle``) with the real pods, the
real upload helper and the real image server; the saved image then launched by a node on the
second engine, with the file written before saving in it.

- a save pushes the image, reports ``saving`` progress and then ``saved`` with the image's
  digest reference and size, and leaves nothing of the instance on the node (pod, volumes,
  upload helper, commit, secrets);
- a push the image server refuses leaves the instance ``stopped`` with the reason, its tool
  container and commit kept, and a retry with a good token succeeds without a new commit.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest

from node_daemon.agent import Agent, Capacity
from node_daemon.metrics import NodeMetrics
from node_daemon.network import ensure_pods_network
from node_daemon.pods import PodRunner, PodSettings, container_name
from node_daemon.records import RecordStore
from protocol import pod
from protocol.messages import (
    DiscardInstance,
    InstanceStateEvent,
    Message,
    RegistryAccess,
    SaveInstance,
    StopInstance,
)
from protocol.registry import PULL, PUSH, parse_reference, repository_access
from tests.support.engines import SecondEngine
from tests.support.node import sample_start
from tests.support.registry import RegistryServer

pytestmark = [pytest.mark.docker]


@dataclass
class Node:
    agent: Agent
    client: docker.DockerClient
    events: list[InstanceStateEvent]

    def handle(self, message: Message) -> None:
        asyncio.run(self.agent.handle(message))

    def states(self, iid: str) -> list[str]:
        return [e.state for e in self.events if e.instance_id == iid]

    def pod(self, iid: str) -> dict[str, str]:
        return {role: c.status for role, c in self.agent.pods.containers(iid).items()}


def make_node(client: docker.DockerClient, network: str, helpers_image: str,
              labels: dict[str, str], data: Path) -> Node:
    ensure_pods_network(client, network, labels)
    events: list[InstanceStateEvent] = []

    async def send(message: Message) -> None:
        assert isinstance(message, InstanceStateEvent)
        events.append(message)

    node_id = f"node{uuid.uuid4().hex[:8]}"
    runner = PodRunner(client, PodSettings(node_id=node_id, network=network,
                                           helpers_image=helpers_image, labels=labels))
    agent = Agent(node_id=node_id, capacity=Capacity(4, 4096),
                  records=RecordStore(data / "instances"), pods=runner, send=send,
                  metrics=NodeMetrics(), launch_timeout=60)
    return Node(agent, client, events)


@pytest.fixture(scope="module")
def node_a(docker_client: docker.DockerClient, unique_name: Callable[[str], str],
           helpers_image: str, run_labels: dict[str, str],
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    node = make_node(docker_client, unique_name("pods-a"), helpers_image, run_labels,
                     tmp_path_factory.mktemp("node-a"))
    yield node
    node.agent.pods.close()


@pytest.fixture(scope="module")
def node_b(second_engine: SecondEngine, unique_name: Callable[[str], str], helpers_image: str,
           run_labels: dict[str, str], tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[Node]:
    node = make_node(second_engine.client, unique_name("pods-b"), helpers_image, run_labels,
                     tmp_path_factory.mktemp("node-b"))
    yield node
    node.agent.pods.close()


@pytest.fixture(scope="module")
def servers(image_server: RegistryServer, node_a: Node) -> Iterator[tuple[str, str]]:
    """(registry as references name it, its URL as node A's pods reach it)."""
    gateway = node_a.agent.pods.pods_gateway()
    beside = image_server.beside(gateway).start()
    port = beside.address.rsplit(":", 1)[1]
    yield image_server.address, f"http://host.docker.internal:{port}"
    beside.stop()


def write_file(node: Node, iid: str, text: str) -> None:
    tool = node.client.containers.get(container_name(iid, pod.ROLE_TOOL))
    code, out = tool.exec_run(["sh", "-c", f"echo {text} > /work.txt"])
    assert code == 0, out


def save(image_server: RegistryServer, servers: tuple[str, str], iid: str, *,
         token_for: str | None = None) -> SaveInstance:
    registry, pods_url = servers
    repository = f"users/alice/{iid}"
    token = image_server.token([repository_access(token_for or repository, PUSH)])
    return SaveInstance(instance_id=iid, image=f"{registry}/{repository}:saved",
                        registry=RegistryAccess(registry=registry, token=token),
                        upload_url=pods_url)


def test_saved_work_is_pushed_and_runs_on_another_node(
        node_a: Node, node_b: Node, image_server: RegistryServer, servers: tuple[str, str],
        tool_image: str):
    iid = f"s{uuid.uuid4().hex[:12]}"
    node_a.handle(sample_start(iid, tool_image))
    assert node_a.states(iid)[-1] == "running", node_a.events
    write_file(node_a, iid, "written-on-node-a")
    node_a.handle(StopInstance(instance_id=iid, grace_seconds=1))
    node_a.handle(save(image_server, servers, iid))

    saved = [e for e in node_a.events if e.instance_id == iid and e.state == "saved"]
    assert saved, node_a.events
    reference = parse_reference(str(saved[-1].image))
    assert reference.repository == f"users/alice/{iid}" and reference.digest
    assert saved[-1].size and saved[-1].size > 0
    progress = [e.progress["save"] for e in node_a.events
                if e.instance_id == iid and "save" in e.progress]
    assert progress and progress[-1] == 100, progress
    assert node_a.pod(iid) == {}
    assert not node_a.client.volumes.list(filters={"label": f"{pod.LABEL_INSTANCE}={iid}"})
    record = node_a.agent.records.get(iid)
    assert record is not None and record.start is None and record.committed_image is None
    assert not node_a.agent.pods.has_image(f"{servers[0]}/users/alice/{iid}:saved")

    derived = f"d{uuid.uuid4().hex[:12]}"
    token = image_server.token([repository_access(reference.repository, PULL)])
    node_b.handle(sample_start(derived, str(saved[-1].image),
                               registry=RegistryAccess(registry=servers[0], token=token)))
    assert node_b.states(derived)[-1] == "running", node_b.events
    tool = node_b.client.containers.get(container_name(derived, pod.ROLE_TOOL))
    assert tool.exec_run(["cat", "/work.txt"]).output.strip() == b"written-on-node-a"
    node_b.handle(DiscardInstance(instance_id=derived))


def test_a_refused_push_keeps_the_work_and_a_retry_saves_it(
        node_a: Node, image_server: RegistryServer, servers: tuple[str, str],
        tool_image: str):
    iid = f"f{uuid.uuid4().hex[:12]}"
    node_a.handle(sample_start(iid, tool_image))
    write_file(node_a, iid, "kept-after-a-failed-save")
    node_a.handle(StopInstance(instance_id=iid, grace_seconds=1))
    node_a.handle(save(image_server, servers, iid, token_for="users/bob/b1"))
    last = [e for e in node_a.events if e.instance_id == iid][-1]
    assert last.state == "stopped" and "refused the push token" in str(last.reason)
    record = node_a.agent.records.get(iid)
    assert record is not None and record.committed_image is not None
    committed = record.committed_image
    assert node_a.agent.pods.has_image(committed)
    assert node_a.pod(iid)[pod.ROLE_TOOL] == "exited"
    assert pod.ROLE_UPLOAD not in node_a.pod(iid)

    node_a.handle(save(image_server, servers, iid))
    assert node_a.states(iid)[-1] == "saved"
    assert not node_a.agent.pods.has_image(committed)
    node_a.handle(DiscardInstance(instance_id=iid))
