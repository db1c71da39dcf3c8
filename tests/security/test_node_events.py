"""Issue 14, High 1: a node speaking for another node on the shared events queue.

Every attack is made as a node makes its events: with the node's own STS credentials from the
portal's real credentials endpoint (moto), onto the real events queue, consumed by the events
function through the local stack's pump (:meth:`ControlPlane.consume_events`). Node A is the
attacker; the instances are placed on node B.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import botocore.exceptions
import pytest
import requests

from control_plane.bodies import NewImage, NewUser
from protocol.messages import (
    InstanceStateEvent,
    NodeHeartbeat,
    StartInstance,
    decode,
)
from protocol.tokens import SigningKey
from tests.support.control_plane import ControlPlane, control_plane
from tests.support.portal_http import Node, PortalBrowser

PASSWORD = "alice-password-1"
FAR_FUTURE = "2099-01-01T00:00:00.000Z"

pytestmark = pytest.mark.timeout(120)


@dataclass
class World:
    plane: ControlPlane
    a: Node
    b: Node
    alice: PortalBrowser
    admin: PortalBrowser
    image_id: str

    def node_item(self, node: Node) -> dict[str, Any]:
        return self.plane.node(node.node_id)

    def launch_on_b(self) -> StartInstance:
        """An instance of alice's placed on node B (A drained meanwhile), reported running."""
        assert self.admin.call("POST", f"/api/nodes/{self.a.node_id}/drain").status_code == 200
        try:
            answer = self.alice.call("POST", "/api/instances", {
                "image_id": self.image_id, "cluster_id": self.plane.cluster_id})
        finally:
            self.admin.call("POST", f"/api/nodes/{self.a.node_id}/activate")
        assert answer.status_code == 202 and answer.json()["node_id"] == self.b.node_id, \
            answer.text
        start = next(m for m in self.commands(self.b) if isinstance(m, StartInstance)
                     and m.instance_id == answer.json()["id"])
        self.b.send(InstanceStateEvent(node_id=self.b.node_id, instance_id=start.instance_id,
                                       state="running"))
        self.plane.consume_events()
        assert self.state(start.instance_id) == "running"
        return start

    def commands(self, node: Node) -> list[object]:
        got = self.plane.sqs.receive_message(QueueUrl=node.queue_url, MaxNumberOfMessages=10,
                                             WaitTimeSeconds=0)
        for m in got.get("Messages", []):
            self.plane.sqs.delete_message(QueueUrl=node.queue_url,
                                          ReceiptHandle=m["ReceiptHandle"])
        return [decode(m["Body"]) for m in got.get("Messages", [])]

    def state(self, instance_id: str) -> str:
        answer = self.alice.call("GET", f"/api/instances/{instance_id}")
        assert answer.status_code == 200, answer.text
        return str(answer.json()["state"])


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    # Saves need an image server named; nothing is pushed to it here.
    with control_plane(settings={"DIT4C_REGISTRY": "127.0.0.1:9"}) as plane:
        svc = plane.services
        svc.accounts.set_password("admin", "admin-password-1", admin=True)
        svc.accounts.create_user(NewUser(username="alice", password=PASSWORD))
        image = svc.catalog.add(NewImage(name="Tool", image="tool:1", port=8080, cpu=0.25,
                                         memory_mb=128))
        a, b = Node.enrol(plane, "node-a"), Node.enrol(plane, "node-b")
        alice, admin = PortalBrowser(plane.url), PortalBrowser(plane.url)
        assert alice.login("alice", PASSWORD).status_code == 200
        assert admin.login("admin", "admin-password-1").status_code == 200
        yield World(plane, a, b, alice, admin, image.image_id)


def _heartbeat(node_id: str, *, sent_at: str | None = None, cpu: float = 2,
               memory_mb: int = 2048) -> NodeHeartbeat:
    fields: dict[str, Any] = {} if sent_at is None else {"sent_at": sent_at}
    return NodeHeartbeat(node_id=node_id, version="1", cpu_total=cpu, memory_mb_total=memory_mb,
                         cpu_used=0.1, memory_mb_used=10, load=0.1, running=[], **fields)


def _iso(when: datetime) -> str:
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def test_heartbeat_for_another_node_dated_in_the_future_is_refused(world: World):
    a, b = world.a, world.b
    before = world.node_item(b)
    forged = _heartbeat(b.node_id, sent_at=FAR_FUTURE, cpu=256, memory_mb=4 << 20)
    a.send(forged)                                  # signed by A, naming B
    a.send(forged, signed_as=b.node_id)             # A's key claiming to be B
    a.send(forged, unsigned=True)                   # no signature at all
    assert world.plane.consume_events() == 3
    after = world.node_item(b)
    for name in ("heartbeat_sent_at", "cpu_milli_total", "memory_mb_total", "last_heartbeat"):
        assert after.get(name) == before.get(name), name
    # B's own heartbeats still count: nothing dated ahead of them was applied.
    b.send(_heartbeat(b.node_id))
    world.plane.consume_events()
    assert world.node_item(b)["heartbeat_sent_at"] != before.get("heartbeat_sent_at")
    assert float(world.node_item(b)["last_heartbeat"]) > float(before["last_heartbeat"])


def test_a_heartbeat_dated_in_the_future_is_refused_even_from_its_node(world: World):
    b = world.b
    ahead = _iso(datetime.now(UTC) + timedelta(hours=1))
    b.send(_heartbeat(b.node_id, sent_at=ahead))
    world.plane.consume_events()
    assert world.node_item(b).get("heartbeat_sent_at") != ahead
    b.send(_heartbeat(b.node_id))  # a true one later still applies
    world.plane.consume_events()
    assert str(world.node_item(b)["heartbeat_sent_at"]) < ahead


def test_failed_report_for_another_nodes_instance_is_refused(world: World):
    start = world.launch_on_b()
    a, b, iid = world.a, world.b, start.instance_id
    failed_as_b = InstanceStateEvent(node_id=b.node_id, instance_id=iid, state="failed",
                                     reason="forged by node A")
    a.send(failed_as_b)
    a.send(failed_as_b, signed_as=b.node_id)
    a.send(failed_as_b, unsigned=True)
    # Honestly signed as A: A is not where the instance is placed.
    a.send(InstanceStateEvent(node_id=a.node_id, instance_id=iid, state="failed"))
    assert world.plane.consume_events() == 4
    assert world.state(iid) == "running"
    assert world.plane.services.oauth._client(start.oauth.client_id) is not None


def test_capacity_claims_for_another_node_or_beyond_enrolment_are_refused(world: World):
    a, b = world.a, world.b
    a.send(_heartbeat(b.node_id, cpu=256, memory_mb=4 << 20))
    a.send(_heartbeat(a.node_id, cpu=256, memory_mb=4 << 20))  # its own, beyond its enrolment
    world.plane.consume_events()
    nodes = {n["id"]: n for n in world.admin.call(
        "GET", f"/api/clusters/{world.plane.cluster_id}/nodes").json()["nodes"]}
    assert (nodes[b.node_id]["cpu_total"], nodes[b.node_id]["memory_mb_total"]) == (2, 2048)
    assert (nodes[a.node_id]["cpu_total"], nodes[a.node_id]["memory_mb_total"]) == (2, 2048)
    a.send(_heartbeat(a.node_id, cpu=1, memory_mb=1024))  # less than enrolled: believed
    world.plane.consume_events()
    assert world.node_item(a)["cpu_milli_total"] == 1000
    a.send(_heartbeat(a.node_id))
    world.plane.consume_events()


def test_saved_with_a_foreign_image_for_another_nodes_instance_is_refused(world: World):
    start = world.launch_on_b()
    a, b, iid = world.a, world.b, start.instance_id
    assert world.alice.call("POST", f"/api/instances/{iid}/stop").status_code == 202
    b.send(InstanceStateEvent(node_id=b.node_id, instance_id=iid, state="stopped"))
    world.plane.consume_events()
    assert world.alice.call("POST", f"/api/instances/{iid}/save").status_code == 202
    foreign = "registry.example/someone-else/their-image:latest"
    saved_as_b = InstanceStateEvent(node_id=b.node_id, instance_id=iid, state="saved",
                                    image=foreign)
    a.send(saved_as_b)
    a.send(saved_as_b, signed_as=b.node_id)
    a.send(InstanceStateEvent(node_id=a.node_id, instance_id=iid, state="saved", image=foreign))
    assert world.plane.consume_events() == 3
    assert world.state(iid) == "saving"
    images = world.alice.call("GET", "/api/images").json()["images"]
    assert all(i["image"] != foreign for i in images)


def test_a_failed_instance_loses_its_oauth_client(world: World):
    start = world.launch_on_b()
    world.b.send(InstanceStateEvent(node_id=world.b.node_id, instance_id=start.instance_id,
                                    state="failed", reason="the tool exited"))
    world.plane.consume_events()
    assert world.state(start.instance_id) == "failed"
    answer = requests.post(world.plane.url + "/oauth/token", data={
        "grant_type": "refresh_token", "refresh_token": "x" * 43}, auth=(
        start.oauth.client_id, start.oauth.client_secret), timeout=15)
    assert answer.status_code == 401 and answer.json()["error"] == "invalid_client"


def test_a_decommissioned_node_is_cut_off_at_once(world: World):
    c = Node.enrol(world.plane, "node-c")
    sqs = c.sqs  # credentials taken while it was trusted: valid for up to an hour
    c.send(_heartbeat(c.node_id))
    world.plane.consume_events()
    applied = world.node_item(c)["heartbeat_sent_at"]
    answer = world.admin.call("POST", f"/api/nodes/{c.node_id}/decommission")
    assert answer.status_code == 200 and answer.json()["state"] == "decommissioned"
    # Its queue is gone: the credentials it holds receive no more commands.
    with pytest.raises(botocore.exceptions.ClientError,
                       match=r"NonExistentQueue|QueueDoesNotExist"):
        sqs.receive_message(QueueUrl=c.queue_url, WaitTimeSeconds=0)
    # Its events, signed with its own key, are refused from now on.
    c.send(_heartbeat(c.node_id))
    world.plane.consume_events()
    assert world.node_item(c)["heartbeat_sent_at"] == applied
    # And it gets no new credentials.
    assert c.credentials().status_code == 403
    # A key that is not the node's own is refused the same way before and after.
    forged = Node(world.plane, c.node_id, SigningKey.generate(), c.queue_url)
    assert forged.credentials().status_code == 401
