"""Reconciliation both ways (control_plane/reconcile.py): a node's heartbeats against the records,
through the events consumer; a router's activity; the node's own view of what it may keep.

Time is the node's clock: heartbeats carry ``sent_at`` values chosen here, a minute and more
apart (the grace period is 60 s).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import boto3
import pytest

from protocol.messages import InstanceActivity, InstanceStateEvent, NodeHeartbeat
from protocol.tokens import SigningKey, node_claims
from tests.functional.conftest import (
    cp_enroll,
    cp_event,
    cp_image_id,
    cp_messages,
    cp_revocations,
)


def at(seconds: int) -> str:
    """A time on the node's clock, ``seconds`` after the tests' start: an hour ago (the
    control plane refuses events dated more than a minute ahead of its own clock)."""
    when = START + timedelta(seconds=seconds)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


START = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
T0 = at(0)
T1 = at(30)  # within the grace period
T2 = at(61)  # past it
T3 = at(90)
T4 = at(122)
STRANGER = "0123456789abcdef"


def beat(node, sent_at, *running, holds=()):
    return NodeHeartbeat(node_id=node["node_id"], version="1", cpu_total=2,
                         memory_mb_total=1024, cpu_used=0, memory_mb_used=0, load=0.1,
                         running=sorted(running), holds=sorted({*running, *holds}),
                         sent_at=sent_at)


def told(node):
    return [(m.TYPE, m.instance_id) for m in cp_messages(node["queue_url"])]


def has_client(cp_env, instance_id):
    item = boto3.client("dynamodb", region_name="us-east-1").get_item(
        TableName=cp_env["DIT4C_OAUTH_CLIENTS_TABLE"],
        Key={"client_id": {"S": f"instance-{instance_id}"}})
    return "Item" in item


@pytest.fixture
def alice(cp_user):
    return cp_user("alice")


@pytest.fixture
def running(alice, node, cp_chalice):
    """An instance of alice's running on the node (its start command taken off the queue)."""
    instance = alice.post("/api/instances", {"image_id": cp_image_id(alice)}).json
    cp_event(cp_chalice, InstanceStateEvent(node_id=node["node_id"], instance_id=instance["id"],
                                            state="running", sent_at=T0))
    cp_messages(node["queue_url"])
    return instance["id"]


def test_a_pod_the_control_plane_does_not_know_is_discarded_after_the_grace_period(
        node, cp_chalice, cp_env, cp_services, caplog):
    cp_event(cp_chalice, beat(node, T0, STRANGER))
    cp_event(cp_chalice, beat(node, T1, STRANGER))
    assert told(node) == []  # a launch in flight, a record just restored: wait
    cp_event(cp_chalice, beat(node, T2, STRANGER))
    assert told(node) == [("discard_instance", STRANGER)]
    assert any(r.instance_id == STRANGER for r in cp_revocations(cp_env))
    assert f"runs instance {STRANGER}, which the control plane does not know: discard sent" \
        in caplog.text
    # still reported: told again, once per grace period (the first one may have been lost)
    cp_event(cp_chalice, beat(node, T3, STRANGER))
    assert told(node) == []
    cp_event(cp_chalice, beat(node, T4, STRANGER))
    assert told(node) == [("discard_instance", STRANGER)]
    assert cp_services.nodes.get(node["node_id"]).strays == {STRANGER: T4}
    # no longer reported: nothing is waited for any more
    cp_event(cp_chalice, beat(node, at(180)))
    assert cp_services.nodes.get(node["node_id"]).strays == {}


def test_a_pod_whose_stop_was_lost_is_stopped_not_discarded(alice, node, running, cp_chalice,
                                                            cp_env):
    assert alice.post(f"/api/instances/{running}/stop").status_code == 202
    assert told(node) == [("stop_instance", running)]  # ... and then lost
    cp_event(cp_chalice, beat(node, T1, running))
    cp_event(cp_chalice, beat(node, at(91), running))
    assert told(node) == [("stop_instance", running)]
    assert not [r for r in cp_revocations(cp_env) if r.instance_id == running]
    assert has_client(cp_env, running)  # it may still be saved


def test_a_discarded_instance_still_running_is_discarded_and_unreachable(
        alice, node, running, cp_chalice, cp_env):
    alice.post(f"/api/instances/{running}/stop")
    cp_event(cp_chalice, InstanceStateEvent(node_id=node["node_id"], instance_id=running,
                                            state="stopped", sent_at=T1))
    assert alice.post(f"/api/instances/{running}/discard").status_code == 202
    cp_messages(node["queue_url"])  # the discard is lost; a later bug restarts the pod
    cp_event(cp_chalice, beat(node, T1, running))
    cp_event(cp_chalice, beat(node, at(91), running))
    assert told(node) == [("discard_instance", running)]
    assert not has_client(cp_env, running)


@pytest.fixture
def other(cp_services, cp_client):
    """A second node in the same cluster."""
    return cp_enroll(cp_client(), cp_services.nodes.create_join_token("default").token, "node-2")


def test_a_pod_of_an_instance_placed_on_another_node_is_discarded(alice, node, running, other,
                                                                  cp_chalice):
    cp_event(cp_chalice, beat(other, T0, running))
    cp_event(cp_chalice, beat(other, T2, running))
    assert told(other) == [("discard_instance", running)]
    assert alice.get(f"/api/instances/{running}").json["state"] == "running"
    assert told(node) == []


def test_a_running_instance_its_node_no_longer_reports_fails(alice, node, running,
                                                             cp_chalice, cp_env):
    cp_event(cp_chalice, beat(node, "2029-12-31T23:59:59.000Z"))  # sent before it ran: no
    cp_event(cp_chalice, beat(node, T1))
    assert alice.get(f"/api/instances/{running}").json["state"] == "running"
    cp_event(cp_chalice, beat(node, T2))
    assert alice.get(f"/api/instances/{running}").json["state"] == "running"  # 31 s: waiting
    cp_event(cp_chalice, beat(node, at(91)))
    got = alice.get(f"/api/instances/{running}").json
    assert got["state"] == "failed"
    assert f"no longer reports it running (since {T1})" in got["reason"]
    assert told(node) == [("discard_instance", running)]
    assert any(r.instance_id == running for r in cp_revocations(cp_env))
    assert not has_client(cp_env, running)


def test_an_instance_reported_again_in_time_is_left_alone(alice, node, running, cp_chalice):
    cp_event(cp_chalice, beat(node, T1))  # one heartbeat without it (a restart of the daemon)
    cp_event(cp_chalice, beat(node, T2, running))
    cp_event(cp_chalice, beat(node, T4, running))
    assert alice.get(f"/api/instances/{running}").json["state"] == "running"
    assert told(node) == []


def test_router_traffic_for_an_instance_that_is_gone_revokes_its_route(
        alice, node, running, cp_chalice, cp_env):
    cp_revocations(cp_env)
    cp_event(cp_chalice, InstanceActivity(router_id="r1", last_activity={
        running: T1, STRANGER: T1}))
    revoked = [r.instance_id for r in cp_revocations(cp_env)]
    assert STRANGER in revoked
    assert running not in revoked


def test_a_node_reads_what_is_placed_on_it_with_its_own_signed_token(
        alice, local, cp_client, cp_services):
    key = SigningKey.generate()
    mine = cp_client().post("/api/nodes/enroll", {
        "join_token": local.join_token, "public_jwk": key.public_jwk(), "name": "node-3",
        "cpu": 1, "memory_mb": 1024}).json
    path = f"/api/nodes/{mine['node_id']}/instances"

    def ask(token):
        return cp_client().get(path, headers={"authorization": f"Bearer {token}"})

    assert ask(key.sign(node_claims(node_id=mine["node_id"]))).json == {"instances": []}
    launched = alice.post("/api/instances", {"image_id": cp_image_id(alice)}).json
    token = key.sign(node_claims(node_id=mine["node_id"]))
    answer = ask(token)
    assert answer.status_code == 200, answer.body
    assert answer.json == {"instances": [{"id": launched["id"], "state": "scheduled"}]}
    # the same token twice, someone else's key, another node's token, no token: refused
    assert ask(token).status_code == 401
    assert ask(SigningKey.generate().sign(node_claims(node_id=mine["node_id"]))).status_code \
        == 401
    assert ask(key.sign(node_claims(node_id=STRANGER))).status_code == 401
    assert cp_client().get(path).status_code == 401


def test_a_start_the_node_never_got_is_sent_again_after_the_grace_period(
        alice, node, cp_chalice, cp_services, caplog):
    launched = alice.post("/api/instances", {"image_id": cp_image_id(alice)}).json
    assert told(node) == [("start_instance", launched["id"])]  # ... and then lost
    cp_event(cp_chalice, beat(node, T0))
    assert told(node) == []  # placed a moment ago: the node may be on it
    cp_services.instances.table.update({"instance_id": launched["id"]}, "SET updated_at = :t",
                                       vals={":t": "2000-01-01T00:00:00.000Z"})
    # A node that holds it (its "starting" report lost) is not sent a second start: that
    # would hand the control plane a second OAuth secret the pod never gets.
    assert cp_event(cp_chalice, beat(node, at(10), holds=[launched["id"]])
                    ) == {"batchItemFailures": []}
    assert told(node) == []
    assert cp_services.nodes.get(node["node_id"]).heartbeat_sent_at == at(10)
    cp_event(cp_chalice, beat(node, T1))
    assert told(node) == [("start_instance", launched["id"])]
    assert "has not started instance" in caplog.text
    assert alice.get(f"/api/instances/{launched['id']}").json["state"] == "scheduled"
    cp_event(cp_chalice, beat(node, T2))
    assert told(node) == []  # sent again just now: wait again
