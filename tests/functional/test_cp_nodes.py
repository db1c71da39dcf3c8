"""Clusters, join tokens, enrolment and node credentials — including the attacks."""

from __future__ import annotations

import hashlib
import json
import time

import boto3
import jwt
import pytest
from moto.sts.models import sts_backends

from control_plane.config import Config
from protocol.tokens import SigningKey, node_claims


def _enroll(cp_admin, client, cluster_id="default", key=None, **extra):
    token = cp_admin.post(f"/api/clusters/{cluster_id}/join-tokens").json["token"]
    key = key or SigningKey.generate()
    body = {"join_token": token, "public_jwk": key.public_jwk(), "name": "node-1", "cpu": 4,
            "memory_mb": 8192, **extra}
    return key, client.post("/api/nodes/enroll", body), token


@pytest.fixture
def cluster(cp_admin):
    r = cp_admin.post("/api/clusters", {"name": "lab"})
    assert r.status_code == 201, r.body
    return r.json["id"]


def test_enroll_makes_a_queue_with_redrive_and_returns_contract_fields(cp_admin, cp_client,
                                                                      cluster, cp_env):
    _, r, _ = _enroll(cp_admin, cp_client(), cluster)
    assert r.status_code == 201, r.body
    assert set(r.json) == {"node_id", "cluster_id", "queue_url", "events_queue_url",
                           "helpers_image"}
    assert r.json["helpers_image"] is None  # no helpers image published here
    assert r.json["cluster_id"] == cluster
    assert r.json["events_queue_url"] == cp_env["DIT4C_EVENTS_QUEUE_URL"]
    sqs = boto3.client("sqs", region_name="us-east-1")
    attrs = sqs.get_queue_attributes(QueueUrl=r.json["queue_url"],
                                     AttributeNames=["All"])["Attributes"]
    assert attrs["QueueArn"].endswith(cp_env["DIT4C_NODE_QUEUE_PREFIX"] + r.json["node_id"])
    assert json.loads(attrs["RedrivePolicy"])["deadLetterTargetArn"] == \
        cp_env["DIT4C_NODE_COMMANDS_DLQ_ARN"]


def test_join_token_is_one_time(cp_admin, cp_client, cluster):
    token = cp_admin.post(f"/api/clusters/{cluster}/join-tokens").json["token"]
    body = {"join_token": token, "public_jwk": SigningKey.generate().public_jwk(),
            "name": "n", "cpu": 1, "memory_mb": 1024}
    assert cp_client().post("/api/nodes/enroll", body).status_code == 201
    second = cp_client().post("/api/nodes/enroll", body)
    assert second.status_code == 401
    assert second.json["error"]["code"] == "unauthorized"


def test_expired_join_token_is_refused(cp_admin, cp_client, cluster, cp_services):
    token = cp_admin.post(f"/api/clusters/{cluster}/join-tokens").json["token"]
    cp_services.nodes.tokens.update(
        {"token_key": "join:" + hashlib.sha256(token.encode()).hexdigest()},
        "SET expires_at = :e", vals={":e": int(time.time()) - 1})
    body = {"join_token": token, "public_jwk": SigningKey.generate().public_jwk(),
            "name": "n", "cpu": 1, "memory_mb": 1024}
    r = cp_client().post("/api/nodes/enroll", body)
    assert r.status_code == 401 and "expired" in r.json["error"]["message"]


@pytest.mark.parametrize("patch", [
    {"public_jwk": {"kty": "oct", "k": "c2VjcmV0"}},
    {"public_jwk": "not a jwk"},
    {"cpu": "four"},
    {"memory_mb": -1},
    {"name": "../../etc"},
    {"join_token": 5},
])
def test_enroll_bad_input_is_400_and_keeps_the_token(cp_admin, cp_client, cluster, patch):
    token = cp_admin.post(f"/api/clusters/{cluster}/join-tokens").json["token"]
    body = {"join_token": token, "public_jwk": SigningKey.generate().public_jwk(),
            "name": "n", "cpu": 1, "memory_mb": 1024}
    r = cp_client().post("/api/nodes/enroll", {**body, **patch})
    assert r.status_code == 400, r.body
    assert set(r.json["error"]) == {"code", "message"}
    assert cp_client().post("/api/nodes/enroll", body).status_code == 201


def test_join_tokens_need_an_admin(cp_user, cluster):
    alice = cp_user("alice")
    assert alice.post(f"/api/clusters/{cluster}/join-tokens").status_code == 403
    assert alice.get(f"/api/clusters/{cluster}/join-tokens").status_code == 403
    assert alice.delete(f"/api/clusters/{cluster}/join-tokens/{'0' * 64}").status_code == 403
    assert alice.post("/api/clusters", {"name": "x"}).status_code == 403


def test_join_tokens_are_listed_without_the_secret_and_revoked(cp_admin, cp_client, cluster,
                                                               cp_env):
    made = cp_admin.post(f"/api/clusters/{cluster}/join-tokens", {"hours": 2}).json
    token = made["token"]
    assert made["id"] == hashlib.sha256(token.encode()).hexdigest()
    assert made["created_by"] == "admin"
    assert 7100 < time.mktime(time.strptime(made["expires_at"][:19], "%Y-%m-%dT%H:%M:%S")) \
        - time.mktime(time.gmtime()) < 7300
    # The exact line a self-hoster runs, with this portal's URL filled in.
    assert made["command"] == (f"dit4c-node join --portal {cp_env['DIT4C_PORTAL_URL']} "
                               f"--token {token} && dit4c-node run")
    other = cp_admin.post(f"/api/clusters/{cluster}/join-tokens").json
    listed = cp_admin.get(f"/api/clusters/{cluster}/join-tokens").json["join_tokens"]
    assert [t["id"] for t in listed] == [made["id"], other["id"]]
    assert token not in json.dumps(listed) and "token" not in listed[0]
    assert made["id"] not in json.dumps(cp_admin.get("/api/clusters/default/join-tokens").json)
    # Revoked: gone from the list, and a node can no longer join with it.
    assert cp_admin.delete(f"/api/clusters/{cluster}/join-tokens/{made['id']}").status_code \
        == 204
    assert cp_admin.delete(f"/api/clusters/{cluster}/join-tokens/{made['id']}").status_code \
        == 404
    assert [t["id"] for t in cp_admin.get(
        f"/api/clusters/{cluster}/join-tokens").json["join_tokens"]] == [other["id"]]
    body = {"join_token": token, "public_jwk": SigningKey.generate().public_jwk(),
            "name": "n", "cpu": 1, "memory_mb": 1024}
    refused = cp_client().post("/api/nodes/enroll", body)
    assert refused.status_code == 401
    assert "new join command" in refused.json["error"]["message"]
    # A used token leaves the list too; a token of another cluster is not revoked through this.
    assert cp_client().post("/api/nodes/enroll", {**body, "join_token": other["token"]}) \
        .status_code == 201
    assert cp_admin.get(f"/api/clusters/{cluster}/join-tokens").json["join_tokens"] == []
    third = cp_admin.post(f"/api/clusters/{cluster}/join-tokens").json
    assert cp_admin.delete(f"/api/clusters/default/join-tokens/{third['id']}").status_code == 404
    for bad in ("x" * 64, "0" * 63, "0" * 65):
        assert cp_admin.delete(f"/api/clusters/{cluster}/join-tokens/{bad}").status_code == 404
    for hours in (0, -1, 10_000, "two"):
        assert cp_admin.post(f"/api/clusters/{cluster}/join-tokens", {"hours": hours}) \
            .status_code == 400


def test_join_command_pins_the_published_helpers_digest(cp_env, cp_services):
    digest = "sha256:" + "ab" * 32
    cp_services.nodes.config = Config.from_env(
        {**cp_env, "DIT4C_HELPERS_IMAGE": f"127.0.0.1:5000/dit4c/helpers:0.1.0@{digest}"})
    cluster = cp_services.nodes.create_cluster("lab")
    made = cp_services.nodes.create_join_token(cluster.cluster_id)
    assert made.command.endswith(f"--helpers-digest {digest} && dit4c-node run")


def _credentials(client, node_id, token):
    return client.post(f"/api/nodes/{node_id}/credentials",
                       headers={"authorization": f"Bearer {token}"})


def test_credentials_are_scoped_by_a_session_policy(cp_admin, cp_client, cluster, cp_env):
    key, r, _ = _enroll(cp_admin, cp_client(), cluster)
    node_id = r.json["node_id"]
    c = _credentials(cp_client(), node_id, key.sign(node_claims(node_id=node_id)))
    assert c.status_code == 200, c.body
    assert {"access_key_id", "secret_access_key", "session_token", "expiration", "region",
            "queue_url", "events_queue_url", "endpoint_url"} == set(c.json)
    assert c.json["queue_url"] == r.json["queue_url"]
    role = sts_backends["123456789012"]["aws"].assumed_roles[-1]
    assert role.role_arn == cp_env["DIT4C_NODE_ROLE_ARN"]
    policy = json.loads(role.policy)
    resources = {s["Resource"]: s["Action"] for s in policy["Statement"]}
    queue_arn = [a for a in resources if "node-" in a]
    assert queue_arn and set(resources[queue_arn[0]]) >= {"sqs:ReceiveMessage",
                                                          "sqs:DeleteMessage"}
    assert "sqs:SendMessage" not in resources[queue_arn[0]]
    assert resources[cp_env["DIT4C_EVENTS_QUEUE_ARN"]] == "sqs:SendMessage"
    assert len(resources) == 2


def test_replayed_jti_is_refused(cp_admin, cp_client, cluster):
    key, r, _ = _enroll(cp_admin, cp_client(), cluster)
    node_id = r.json["node_id"]
    token = key.sign(node_claims(node_id=node_id))
    assert _credentials(cp_client(), node_id, token).status_code == 200
    again = _credentials(cp_client(), node_id, token)
    assert again.status_code == 401 and "replayed" in again.json["error"]["message"]


def test_forged_expired_and_unsigned_tokens_are_refused(cp_admin, cp_client, cluster):
    key, r, _ = _enroll(cp_admin, cp_client(), cluster)
    node_id = r.json["node_id"]
    other = SigningKey(key.kid, SigningKey.generate().private_key)  # same kid, wrong key
    expired = key.sign(node_claims(node_id=node_id, now=time.time() - 3600))
    long_lived = key.sign({**node_claims(node_id=node_id), "exp": int(time.time()) + 3600})
    unsigned = jwt.encode(node_claims(node_id=node_id), None, algorithm="none",  # type: ignore[arg-type]
                          headers={"kid": key.kid})
    hs256 = jwt.encode(node_claims(node_id=node_id), "secret-key-of-32-bytes-or-more-xx",
                       algorithm="HS256", headers={"kid": key.kid})
    for token in (other.sign(node_claims(node_id=node_id)), expired, long_lived, unsigned,
                  hs256, "garbage", ""):
        c = _credentials(cp_client(), node_id, token)
        assert c.status_code == 401, (token, c.body)
    assert cp_client().post(f"/api/nodes/{node_id}/credentials").status_code == 401


def test_token_of_another_node_is_refused(cp_admin, cp_client, cluster):
    key_a, a, _ = _enroll(cp_admin, cp_client(), cluster)
    _, b, _ = _enroll(cp_admin, cp_client(), cluster)
    token = key_a.sign(node_claims(node_id=a.json["node_id"]))
    assert _credentials(cp_client(), b.json["node_id"], token).status_code == 401
    assert _credentials(cp_client(), "0123abcd", token).status_code == 401


def test_a_node_withdraws_only_itself_and_only_before_it_ran(cp_admin, cp_client, cluster,
                                                             cp_services):
    key_a, a, _ = _enroll(cp_admin, cp_client(), cluster)
    key_b, b, _ = _enroll(cp_admin, cp_client(), cluster)
    a_id, b_id = a.json["node_id"], b.json["node_id"]

    def withdraw(node_id, key, as_node=None):
        token = key.sign(node_claims(node_id=as_node or node_id))
        return cp_client().delete(f"/api/nodes/{node_id}",
                                  headers={"authorization": f"Bearer {token}"})

    assert withdraw(b_id, key_a, as_node=a_id).status_code == 401  # a's token, b's id
    assert cp_client().delete(f"/api/nodes/{b_id}").status_code == 401
    assert withdraw(a_id, key_a).status_code == 204
    assert cp_services.nodes.find(a_id) is None
    sqs = boto3.client("sqs", region_name="us-east-1")
    with pytest.raises(sqs.exceptions.QueueDoesNotExist):
        sqs.get_queue_attributes(QueueUrl=a.json["queue_url"], AttributeNames=["QueueArn"])
    # Once it has sent a heartbeat it is a node an admin decommissions.
    cp_services.nodes.nodes.update({"node_id": b_id}, "SET running = :r", vals={":r": []})
    assert withdraw(b_id, key_b).status_code == 409
    assert cp_services.nodes.find(b_id) is not None


def test_decommissioned_node_gets_no_credentials(cp_admin, cp_client, cluster):
    key, r, _ = _enroll(cp_admin, cp_client(), cluster)
    node_id = r.json["node_id"]
    assert cp_admin.post(f"/api/nodes/{node_id}/decommission").status_code == 200
    c = _credentials(cp_client(), node_id, key.sign(node_claims(node_id=node_id)))
    assert c.status_code == 403


def test_node_list_drain_and_heartbeat_age(cp_admin, cp_client, cluster):
    _, r, _ = _enroll(cp_admin, cp_client(), cluster)
    node_id = r.json["node_id"]
    nodes = cp_admin.get(f"/api/clusters/{cluster}/nodes").json["nodes"]
    assert [n["id"] for n in nodes] == [node_id]
    assert (nodes[0]["cpu_total"], nodes[0]["memory_mb_total"]) == (4, 8192)
    assert (nodes[0]["cpu_reserved"], nodes[0]["memory_mb_reserved"]) == (0, 0)
    assert nodes[0]["heartbeat_age_seconds"] < 5
    assert cp_admin.post(f"/api/nodes/{node_id}/drain").json["state"] == "draining"
    assert cp_admin.post(f"/api/nodes/{node_id}/activate").json["state"] == "active"
    assert cp_admin.post(f"/api/nodes/{node_id}/decommission").json["state"] == \
        "decommissioned"
    assert cp_admin.post(f"/api/nodes/{node_id}/activate").status_code == 409
    assert cp_admin.get("/api/clusters/nope/nodes").status_code == 404


def test_clusters_are_listed_by_their_index_even_ones_made_before_it(cp_admin, cp_services):
    # A cluster stored before the by-kind index existed (no kind attribute) is not listed
    # until bootstrap's create_cluster backfills it; listing never scans.
    cp_services.nodes.clusters.put({"cluster_id": "legacy", "name": "Old",
                                    "created_at": "2020-01-01T00:00:00.000Z"})
    made = cp_admin.post("/api/clusters", {"name": "New"}).json
    listed = [c["id"] for c in cp_admin.get("/api/clusters").json["clusters"]]
    assert made["id"] in listed and "legacy" not in listed
    cp_services.nodes.create_cluster("Old", cluster_id="legacy")
    listed = [c["id"] for c in cp_admin.get("/api/clusters").json["clusters"]]
    assert listed.index("legacy") < listed.index(made["id"])  # oldest first
