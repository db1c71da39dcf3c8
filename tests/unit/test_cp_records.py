"""Records read the items the control plane has always written, and write them back the same.

Each item below is what the code before typed records stored (``.dit4c/`` data of the local
stack, tables of a deployment): it must load, and ``to_item`` must give it back (a ``NULL``
attribute reads as None and is not written again; a cluster stored before the by-kind index
gets its ``kind``).
"""

from __future__ import annotations

from typing import Any

import pytest

from control_plane.records import Cluster, Image, ImageRef, Instance, Node, NodeStatus, Record
from protocol.states import InstanceState

T0 = "2030-01-01T00:00:00.000Z"
PENDING = {
    "instance_id": "a1b2", "owner": "alice", "name": "Busybox", "image_id": "c3d4",
    "image": "dit4c/test-tool:busybox", "port": 8080, "cpu": 1, "memory_mb": 512,
    "cluster_id": "default", "hostname": "a1b2.apps.test", "url": "http://a1b2.apps.test:8080",
    "state": "pending", "version": 1, "progress": {}, "node_id": "unplaced",
    "created_at": T0, "updated_at": T0, "transition": "pending", "transition_deadline": T0,
    "reason": "waiting for a node in cluster default with room for 1 CPU and 512 MB"}
RUNNING = {
    **PENDING, "state": "running", "version": 4, "node_id": "e5f6", "reserved": True,
    "node_queue_url": "http://sqs/q/node-e5f6", "attempts": 1, "reason": None,
    "progress": {"pull": 100}, "last_report_at": T0, "cpu": 0.5}
SAVED = {
    **{k: v for k, v in RUNNING.items() if k not in ("reserved", "reason")},
    "state": "saved", "version": 9, "saved_image": "dit4c-saved/alice/a1b2:latest",
    "saved_image_id": "a1b2", "progress": {"pull": 100, "save": 100}}
del SAVED["transition"], SAVED["transition_deadline"]
ENROLLED = {
    "node_id": "e5f6", "cluster_id": "default", "name": "n1",
    "public_jwk": {"kty": "EC", "crv": "P-256", "x": "xx", "y": "yy"}, "kid": "k1",
    "queue_url": "http://sqs/q/node-e5f6", "queue_arn": "arn:aws:sqs:us-east-1:1:node-e5f6",
    "cpu_milli_total": 2000, "memory_mb_total": 1024, "cpu_milli_reserved": 0,
    "memory_mb_reserved": 0, "status": "active", "enrolled_at": T0,
    "last_heartbeat": 1893456000.25}
BEATING = {
    **ENROLLED, "status": "draining", "cpu_milli_reserved": 500, "memory_mb_reserved": 512,
    "heartbeat_sent_at": T0, "daemon_version": "0.1.0", "cpu_used": 0, "memory_mb_used": 0,
    "load": 0.5, "running": ["a1b2"]}
CATALOG = {"image_id": "c3d4", "owner": "_catalog", "name": "Busybox",
           "image": "dit4c/test-tool:busybox", "port": 8080, "cpu": 1, "memory_mb": 512,
           "tags": ["demo"], "created_at": T0}
SAVED_IMAGE = {**CATALOG, "image_id": "a1b2", "owner": "alice", "name": "Busybox (saved)",
               "image": "dit4c-saved/alice/a1b2:latest", "tags": ["saved"],
               "source_instance": "a1b2"}


@pytest.mark.parametrize(("record", "item"), [
    (Instance, PENDING), (Instance, RUNNING), (Instance, SAVED), (Node, ENROLLED),
    (Node, BEATING), (Image, CATALOG), (Image, SAVED_IMAGE),
    (Cluster, {"cluster_id": "default", "name": "Default cluster", "kind": "cluster",
               "created_at": T0}),
    (ImageRef, {"image_id": "ref:dit4c/test-tool:busybox", "target": "c3d4"}),
])
def test_stored_items_load_and_write_back_unchanged(record: type[Record],
                                                     item: dict[str, Any]) -> None:
    assert record.from_item(item).to_item() == {k: v for k, v in item.items() if v is not None}


def test_typed_values() -> None:
    running = Instance.from_item(RUNNING)
    assert running.state is InstanceState.RUNNING and running.reserved
    assert isinstance(Instance.from_item(PENDING).cpu, float)
    assert running.placed_on == "e5f6" and Instance.from_item(PENDING).placed_on is None
    assert Instance.from_item(PENDING).attempts == 0 and not Instance.from_item(PENDING).reserved
    assert Node.from_item(BEATING).status is NodeStatus.DRAINING
    assert Node.from_item(ENROLLED).running is None
    assert Image.from_item(CATALOG).in_catalog and not Image.from_item(SAVED_IMAGE).in_catalog


def test_a_cluster_from_before_the_by_kind_index_loads() -> None:
    legacy = Cluster.from_item({"cluster_id": "legacy", "name": "Old"})
    assert legacy.kind == "cluster" and legacy.created_at is None
