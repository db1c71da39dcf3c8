"""Instances end to end through the API, the node queue, the events consumer and the reaper."""

from __future__ import annotations

import json

import jwt
import pytest

from control_plane.bootstrap import ensure_local_defaults
from protocol import pod
from protocol.messages import InstanceStateEvent, NodeHeartbeat, StartInstance
from protocol.registry import parse_reference
from protocol.tokens import AUD_TUNNEL, KeySet, verify_tunnel
from tests.functional.conftest import (
    CATALOG,
    cp_enroll,
    cp_event,
    cp_image_id,
    cp_messages,
    cp_reap,
    cp_revocations,
    with_registry,
)

DIGEST = "sha256:" + "5a" * 32


@pytest.fixture
def cp_env(cp_env, cp_registry_port):
    return with_registry(cp_env, cp_registry_port)


def pushed(save) -> str:
    """What a node reports after pushing ``save``: its repository, by digest."""
    return str(save.image.rsplit(":", 1)[0]) + "@" + DIGEST


def test_launch_places_and_sends_a_complete_start(cp_user, node, cp_services, cp_chalice,
                                                  cp_env):
    alice = cp_user("alice")
    r = alice.post("/api/instances", {"image_id": cp_image_id(alice)})
    assert r.status_code == 202, r.body
    inst = r.json
    assert inst["state"] == "scheduled" and inst["node_id"] == node["node_id"]
    assert inst["url"] is None
    (start,) = cp_messages(node["queue_url"])
    assert isinstance(start, StartInstance)
    iid = inst["id"]
    assert start.instance_id == iid
    assert start.hostname == f"{iid}.apps.test"
    assert start.url == f"http://{iid}.apps.test:8080"
    assert start.image == "dit4c/test-tool:busybox" and start.port == 8080
    assert start.cpu == 1 and start.memory_mb == 512
    assert start.router_urls == ["ws://router.test:8080/.dit4c/tunnel"]
    assert start.oauth.authorize_url == "http://portal.test:8000/oauth/authorize"
    assert start.oauth.token_url == "http://host.docker.internal:8000/oauth/token"
    assert start.oauth.jwks_url == "http://host.docker.internal:8000/.well-known/jwks.json"
    assert start.oauth.client_id and start.oauth.client_secret
    client = cp_services.oauth._clients.get({"client_id": start.oauth.client_id})
    assert client["redirect_uris"] == [start.url + pod.CALLBACK_PATH]
    jwks = alice.get("/.well-known/jwks.json").json
    claims = verify_tunnel(start.tunnel_token, KeySet.from_jwks(jwks), hostname=start.hostname)
    assert claims["aud"] == AUD_TUNNEL and claims["sub"] == iid

    # the node reports progress, then running (out of order and duplicated)
    nid = node["node_id"]
    running = InstanceStateEvent(node_id=nid, instance_id=iid, state="running")
    pulling = InstanceStateEvent(node_id=nid, instance_id=iid, state="starting",
                                 progress={"pull": 40}, sent_at="2000-01-01T00:00:00.000Z")
    assert cp_event(cp_chalice, running, running, pulling) == {"batchItemFailures": []}
    got = alice.get(f"/api/instances/{iid}").json
    assert got["state"] == "running" and got["url"] == start.url

    # stop: the node is told; its report releases the room
    stopped = alice.post(f"/api/instances/{iid}/stop")
    assert stopped.status_code == 202 and stopped.json["state"] == "stopping"
    assert [m.TYPE for m in cp_messages(node["queue_url"])] == ["stop_instance"]
    cp_event(cp_chalice, InstanceStateEvent(node_id=nid, instance_id=iid, state="stopped"))
    assert cp_services.nodes.get(nid).cpu_milli_reserved == 0

    # save: saving with progress, then saved -> a saved image of the owner
    saving = alice.post(f"/api/instances/{iid}/save").json
    assert saving["state"] == "saving"
    (save,) = cp_messages(node["queue_url"])
    assert save.TYPE == "save_instance"
    target = parse_reference(save.image)
    assert target.repository == f"users/alice/{iid}" and target.tag == "saved"
    assert save.registry is not None and save.registry.registry == target.registry
    assert save.upload_url == f"http://{target.registry}"
    claims = jwt.decode(save.registry.token, options={"verify_signature": False})
    assert claims["access"] == [{"type": "repository", "name": target.repository,
                                 "actions": ["pull", "push"]}]
    cp_event(cp_chalice, InstanceStateEvent(node_id=nid, instance_id=iid, state="saving",
                                          progress={"save": 50}))
    assert alice.get(f"/api/instances/{iid}").json["progress"]["save"] == 50
    cp_event(cp_chalice, InstanceStateEvent(node_id=nid, instance_id=iid, state="saved",
                                          image=pushed(save), size=1234))
    done = alice.get(f"/api/instances/{iid}").json
    assert done["state"] == "saved" and done["saved_image_id"]
    saved = [i for i in alice.get("/api/images").json["images"] if i["kind"] == "saved"]
    assert [(i["image"], i["size"], i["source_instance"]) for i in saved] == [
        (pushed(save), 1234, iid)]

    # a derived instance from the saved image: the node gets a token to pull it
    derived = alice.post("/api/instances", {"image_id": saved[0]["id"]})
    assert derived.status_code == 202 and derived.json["image"] == pushed(save)
    (start_derived,) = [m for m in cp_messages(node["queue_url"]) if m.TYPE == "start_instance"]
    assert start_derived.registry is not None
    claims = jwt.decode(start_derived.registry.token, options={"verify_signature": False})
    assert claims["access"] == [{"type": "repository", "name": target.repository,
                                 "actions": ["pull"]}]

    # delete removes it from the list and tells the routers
    assert alice.delete(f"/api/instances/{iid}").status_code == 204
    assert iid not in [i["id"] for i in alice.get("/api/instances").json["instances"]]
    assert any(r.instance_id == iid for r in cp_revocations(cp_env))


def test_other_users_instances_are_not_found(cp_user, node):
    alice, bob = cp_user("alice"), cp_user("bob")
    iid = alice.post("/api/instances", {"image_id": cp_image_id(alice)}).json["id"]
    for method, path in [("GET", ""), ("POST", "/stop"), ("POST", "/save"),
                         ("POST", "/discard"), ("DELETE", ""), ("POST", "/share")]:
        r = bob.request(method, f"/api/instances/{iid}{path}", {"username": "bob"})
        assert r.status_code == 404, (path, r.body)
        assert r.json["error"]["code"] == "not_found"
    assert bob.get("/api/instances").json["instances"] == []


def test_sharing_grants_and_revokes(cp_user, node, cp_env):
    alice, bob = cp_user("alice"), cp_user("bob")
    iid = alice.post("/api/instances", {"image_id": cp_image_id(alice)}).json["id"]
    assert alice.post(f"/api/instances/{iid}/share", {"username": "bob"}).json[
        "shared_with"] == ["bob"]
    assert bob.get(f"/api/instances/{iid}").status_code == 200
    assert [i["id"] for i in bob.get("/api/instances").json["instances"]] == [iid]
    assert bob.post(f"/api/instances/{iid}/share", {"username": "carol"}).status_code == 403
    assert alice.post(f"/api/instances/{iid}/share", {"username": "nobody"}).status_code == 404
    assert alice.post(f"/api/instances/{iid}/share",
                      {"username": "bob", "revoke": True}).json["shared_with"] == []
    assert bob.get(f"/api/instances/{iid}").status_code == 404
    # The grantee's sessions end in the pod; the route stays up for the owner (a router
    # revocation would close the pod's tunnel for everyone).
    assert not [r for r in cp_revocations(cp_env) if r.instance_id == iid]
    assert alice.get(f"/api/instances/{iid}").status_code == 200


def test_per_user_limit_answers_429_with_a_clear_message(cp_user, node, cp_chalice):
    alice = cp_user("alice")
    image = cp_image_id(alice)
    launched = [alice.post("/api/instances", {"image_id": image}) for _ in range(3)]
    assert [r.status_code for r in launched] == [202] * 3  # the fixture's limit is 3
    r = alice.post("/api/instances", {"image_id": image})
    assert r.status_code == 429
    assert "limit is 3" in r.json["error"]["message"]
    assert len(alice.get("/api/instances").json["instances"]) == 3  # nothing was made
    # a stopped instance no longer counts
    first = launched[0].json
    alice.post(f"/api/instances/{first['id']}/stop")
    assert alice.post("/api/instances", {"image_id": image}).status_code == 429  # stopping
    cp_event(cp_chalice, InstanceStateEvent(node_id=first["node_id"], instance_id=first["id"],
                                          state="stopped"))
    assert alice.post("/api/instances", {"image_id": image}).status_code == 202


def test_no_room_stays_pending_with_a_reason_then_fails(cp_user, node, cp_chalice,
                                                        cp_services):
    alice = cp_user("alice")
    image = cp_image_id(alice)
    first = alice.post("/api/instances", {"image_id": image}).json
    second = alice.post("/api/instances", {"image_id": image}).json
    third = alice.post("/api/instances", {"image_id": image}).json  # node has 2 CPU, 1024 MB
    assert first["state"] == "scheduled" and second["state"] == "scheduled"
    assert third["state"] == "pending" and "room" in third["reason"]
    node_item = cp_services.nodes.get(node["node_id"])
    assert node_item.cpu_milli_reserved == 2000
    assert node_item.memory_mb_reserved == 1024
    # the deadline passes: the reaper fails it with a reason people can read
    cp_services.instances.table.update({"instance_id": third["id"]},
                                       "SET transition_deadline = :d",
                                       vals={":d": "2000-01-01T00:00:00.000Z"})
    cp_reap(cp_chalice)
    failed = alice.get(f"/api/instances/{third['id']}").json
    assert failed["state"] == "failed" and "had room" in failed["reason"]


@pytest.mark.usefixtures("local")
def test_silent_node_fails_running_and_replaces_scheduled(cp_user, node, cp_chalice,
                                                          cp_services, cp_client):
    alice = cp_user("alice")
    image = cp_image_id(alice)
    a = alice.post("/api/instances", {"image_id": image}).json
    b = alice.post("/api/instances", {"image_id": image}).json
    nid = node["node_id"]
    cp_event(cp_chalice, InstanceStateEvent(node_id=nid, instance_id=a["id"], state="running"))
    second = cp_enroll(cp_client(), cp_services.nodes.create_join_token("default").token,
                     "node-2")
    cp_services.nodes.nodes.update({"node_id": nid}, "SET last_heartbeat = :t",
                                   vals={":t": 0})
    report = cp_reap(cp_chalice).payload
    assert nid in report["silent_nodes"]
    got_a = alice.get(f"/api/instances/{a['id']}").json
    assert got_a["state"] == "failed" and "node-1 stopped responding" in got_a["reason"]
    got_b = alice.get(f"/api/instances/{b['id']}").json
    assert got_b["state"] == "scheduled" and got_b["node_id"] == second["node_id"]
    assert cp_services.nodes.get(nid).cpu_milli_reserved == 0
    told = [(m.TYPE, m.instance_id) for m in cp_messages(node["queue_url"])
            if m.TYPE == "discard_instance"]
    assert sorted(told) == sorted([("discard_instance", a["id"]), ("discard_instance", b["id"])])
    # when the old node comes back still running b, it is told again to discard it
    cp_event(cp_chalice, InstanceStateEvent(node_id=nid, instance_id=b["id"], state="running"))
    assert [(m.TYPE, m.instance_id) for m in cp_messages(node["queue_url"])] == \
        [("discard_instance", b["id"])]
    assert alice.get(f"/api/instances/{b['id']}").json["node_id"] == second["node_id"]


def test_heartbeats_apply_newest_only(node, cp_chalice, cp_services):
    nid = node["node_id"]

    def beat(sent_at, load):
        return NodeHeartbeat(node_id=nid, version="1", cpu_total=2, memory_mb_total=1024,
                             cpu_used=0.5, memory_mb_used=100, load=load, running=[],
                             sent_at=sent_at)

    cp_event(cp_chalice, beat("2020-01-01T00:00:02.000Z", 2.0),
           beat("2020-01-01T00:00:01.000Z", 1.0))
    assert cp_services.nodes.get(nid).load == 2.0


def test_drained_node_gets_no_placements(cp_user, node, cp_admin):
    assert cp_admin.post(f"/api/nodes/{node['node_id']}/drain").status_code == 200
    alice = cp_user("alice")
    r = alice.post("/api/instances", {"image_id": cp_image_id(alice)})
    assert r.json["state"] == "pending"


def test_malformed_events_are_dropped_not_retried(cp_chalice):
    event = cp_chalice.events.generate_sqs_event(["not json", json.dumps({"type": "x"})])
    assert cp_chalice.lambda_.invoke("on_event", event).payload == {"batchItemFailures": []}


def test_bootstrap_is_idempotent(cp_services, cp_client):
    first = ensure_local_defaults("first-password", CATALOG, cp_services)
    second = ensure_local_defaults("second-password", CATALOG, cp_services)
    assert first.cluster_id == second.cluster_id == "default"
    assert first.join_token != second.join_token
    client = cp_client()
    assert client.login("admin", "first-password").status_code == 401
    assert client.login("admin", "second-password").status_code == 200
    assert len(client.get("/api/images").json["images"]) == 1
    assert [c["id"] for c in client.get("/api/clusters").json["clusters"]] == ["default"]


def _saved_image(alice, node, cp_chalice):
    iid = alice.post("/api/instances", {"image_id": cp_image_id(alice)}).json["id"]
    nid = node["node_id"]
    cp_event(cp_chalice, InstanceStateEvent(node_id=nid, instance_id=iid, state="running"),
           InstanceStateEvent(node_id=nid, instance_id=iid, state="stopped"))
    assert alice.post(f"/api/instances/{iid}/save").status_code == 202
    (save,) = [m for m in cp_messages(node["queue_url"]) if m.TYPE == "save_instance"]
    cp_event(cp_chalice, InstanceStateEvent(node_id=nid, instance_id=iid, state="saved",
                                          image=pushed(save)))
    return alice.get(f"/api/instances/{iid}").json["saved_image_id"]


def test_saved_images_are_private_until_shared(cp_user, node, cp_chalice, cp_image_server):
    alice, bob = cp_user("alice"), cp_user("bob")
    image_id = _saved_image(alice, node, cp_chalice)
    assert image_id not in [i["id"] for i in bob.get("/api/images").json["images"]]
    assert bob.post("/api/instances", {"image_id": image_id}).status_code == 404
    assert bob.post(f"/api/images/{image_id}/share", {"username": "bob"}).status_code == 404
    assert alice.post(f"/api/images/{image_id}/share", {"username": "bob"}).json[
        "shared_with"] == ["bob"]
    assert image_id in [i["id"] for i in bob.get("/api/images").json["images"]]
    assert bob.post("/api/instances", {"image_id": image_id}).status_code == 202
    assert bob.delete(f"/api/images/{image_id}").status_code == 403
    alice.post(f"/api/images/{image_id}/share", {"username": "bob", "revoke": True})
    assert bob.post("/api/instances", {"image_id": image_id}).status_code == 404
    assert alice.delete(f"/api/images/{image_id}").status_code == 204


def test_admins_see_and_act_on_any_instance(cp_user, node, cp_admin):
    alice = cp_user("alice")
    iid = alice.post("/api/instances", {"image_id": cp_image_id(alice)}).json["id"]
    assert cp_admin.get(f"/api/instances/{iid}").json["owner"] == "alice"
    unplaced = alice.post("/api/instances", {"image_id": cp_image_id(alice),
                                             "cluster_id": "lab"})
    assert unplaced.status_code == 404  # no such cluster: nothing made
    cp_admin.post(f"/api/nodes/{node['node_id']}/drain")
    waiting = alice.post("/api/instances", {"image_id": cp_image_id(alice)}).json
    assert waiting["state"] == "pending" and waiting["node_id"] is None
    listed = {i["id"] for i in cp_admin.get("/api/instances?all=true").json["instances"]}
    assert {iid, waiting["id"]} <= listed
    assert alice.get("/api/instances?all=true").status_code == 403
    assert cp_admin.post(f"/api/instances/{iid}/stop").status_code == 202


def test_state_conflicts_are_409_with_the_state_named(cp_user, node):
    alice = cp_user("alice")
    iid = alice.post("/api/instances", {"image_id": cp_image_id(alice)}).json["id"]
    r = alice.post(f"/api/instances/{iid}/save")
    assert r.status_code == 409 and "scheduled" in r.json["error"]["message"]
    assert alice.delete(f"/api/instances/{iid}").status_code == 409
    assert alice.post(f"/api/instances/{iid}/discard").status_code == 409


@pytest.mark.parametrize("body", [{"image_id": 5}, {"image_id": "nope"}, {},
                                  {"image_id": "abc", "cluster_id": "nope"}])
def test_bad_launches_are_4xx(cp_user, node, body):
    alice = cp_user("alice")
    if body.get("image_id") == "abc":
        body = {**body, "image_id": cp_image_id(alice)}
    r = alice.post("/api/instances", body)
    assert r.status_code in (400, 404), r.body
