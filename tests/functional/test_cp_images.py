"""Saved images through the API: sharing with users and by expiring links, export links,
deletion that deletes the manifest on the (real) image server, and a node that reports a save
elsewhere than it was told."""

from __future__ import annotations

import hashlib
import json
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import boto3
import jwt
import pytest

from control_plane.bodies import NewImage
from control_plane.bootstrap import ensure_local_defaults
from protocol.messages import InstanceStateEvent, decode
from protocol.registry import EXPORT_CLAIM, PUSH, parse_reference, repository_access
from protocol.tokens import SigningKey
from tests.support.events import signed_event

from .conftest import with_registry

CATALOG = [NewImage(name="Busybox", image="dit4c/test-tool:busybox", port=8080, cpu=1,
                    memory_mb=256)]


@pytest.fixture
def cp_env(cp_env, cp_registry_port):
    return with_registry(cp_env, cp_registry_port)


KEYS: dict[str, SigningKey] = {}
"""Each enrolled node's key: its events are signed with it."""


@pytest.fixture
def node(cp_services, cp_client) -> dict[str, Any]:
    local = ensure_local_defaults("admin-password-1", CATALOG, cp_services)
    key = SigningKey.generate()
    r = cp_client().post("/api/nodes/enroll", {
        "join_token": local.join_token, "public_jwk": key.public_jwk(),
        "name": "node-1", "cpu": 4, "memory_mb": 4096})
    assert r.status_code == 201, r.body
    enrolled: dict[str, Any] = r.json
    KEYS[enrolled["node_id"]] = key
    return enrolled


def _event(cp_chalice, *messages):
    result = cp_chalice.lambda_.invoke("on_event", signed_event(KEYS, *messages)).payload
    assert result == {"batchItemFailures": []}, result
    return result


def _save_message(queue_url):
    sqs = boto3.client("sqs", region_name="us-east-1")
    found = []
    while got := sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10).get(
            "Messages", []):
        for m in got:
            found.append(decode(m["Body"]))
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=m["ReceiptHandle"])
    (save,) = [m for m in found if m.TYPE == "save_instance"]
    return save


def saved_image(user, node, cp_chalice, *,
                reported: Callable[[Any], str] | None = None) -> tuple[str, Any]:
    """Launch, stop and save an instance; the node reports ``reported(save command)`` (default:
    its own repository by a made-up digest). Returns (instance id, the save command)."""
    catalog = next(i["id"] for i in user.get("/api/images").json["images"]
                   if i["kind"] == "catalog")
    iid = user.post("/api/instances", {"image_id": catalog}).json["id"]
    nid = node["node_id"]
    _event(cp_chalice, InstanceStateEvent(node_id=nid, instance_id=iid, state="running"),
           InstanceStateEvent(node_id=nid, instance_id=iid, state="stopped"))
    assert user.post(f"/api/instances/{iid}/save").status_code == 202
    save = _save_message(node["queue_url"])
    image = reported(save) if reported else \
        save.image.rsplit(":", 1)[0] + "@sha256:" + "7c" * 32
    _event(cp_chalice, InstanceStateEvent(node_id=nid, instance_id=iid, state="saved",
                                          image=image, size=2048))
    return iid, save


def test_a_link_shares_until_it_expires_or_is_revoked(cp_user, node, cp_chalice):
    alice, bob, carol = cp_user("alice"), cp_user("bob"), cp_user("carol")
    image_id, _ = saved_image(alice, node, cp_chalice)
    made = alice.post(f"/api/images/{image_id}/share", {"link": True}).json
    (link,) = made["links"]
    assert link["url"].startswith("http://portal.test:8000/#/images/accept/")
    hours = (time.mktime(time.strptime(link["expires_at"], "%Y-%m-%dT%H:%M:%SZ"))
             - time.mktime(time.gmtime())) / 3600
    assert 5.9 < hours <= 6.01  # six hours by default, as the original
    token = link["url"].rsplit("/", 1)[1]

    assert image_id not in [i["id"] for i in bob.get("/api/images").json["images"]]
    accepted = bob.post("/api/images/links", {"token": token})
    assert accepted.status_code == 200 and accepted.json["id"] == image_id
    assert image_id in [i["id"] for i in bob.get("/api/images").json["images"]]
    assert bob.post("/api/instances", {"image_id": image_id}).status_code == 202
    # the listing shows the redeemer and the link (without its secret)
    listed = alice.get(f"/api/images/{image_id}/share").json
    assert listed["shared_with"] == ["bob"] and listed["links"][0]["url"] is None
    # a guessed secret is refused
    wrong = token.rsplit(".", 1)[0] + ".x" * 10
    assert carol.post("/api/images/links", {"token": wrong[:200]}).status_code in (400, 404)
    forged = ".".join([*token.split(".")[:2], "A" * 32])
    assert carol.post("/api/images/links", {"token": forged}).status_code == 404
    # revoking the link revokes bob too
    revoked = alice.post(f"/api/images/{image_id}/share", {"link_id": link["id"],
                                                            "revoke": True}).json
    assert revoked == {"id": image_id, "shared_with": [], "links": []}
    assert bob.post("/api/instances", {"image_id": image_id}).status_code == 404
    assert carol.post("/api/images/links", {"token": token}).status_code == 404


def test_an_expired_link_is_refused(cp_user, node, cp_chalice, cp_services):
    alice, bob = cp_user("alice"), cp_user("bob")
    image_id, _ = saved_image(alice, node, cp_chalice)
    link = alice.post(f"/api/images/{image_id}/share", {"link": True, "hours": 0.1}).json[
        "links"][0]
    token = link["url"].rsplit("/", 1)[1]
    stored = cp_services.shares.link("image", image_id, link["id"])
    cp_services.shares.table.put({**stored, "expires_at": int(time.time()) - 1})
    r = bob.post("/api/images/links", {"token": token})
    assert r.status_code == 404 and "expired" in r.json["error"]["message"]
    assert alice.get(f"/api/images/{image_id}/share").json["links"] == []


def test_only_the_owner_shares_and_bad_share_bodies_are_400(cp_user, node, cp_chalice):
    alice, bob = cp_user("alice"), cp_user("bob")
    image_id, _ = saved_image(alice, node, cp_chalice)
    assert bob.post(f"/api/images/{image_id}/share", {"link": True}).status_code == 404
    assert bob.get(f"/api/images/{image_id}/share").status_code == 404
    for body in ({}, {"link_id": "abc"}, {"username": "alice"}, {"hours": 0}):
        assert alice.post(f"/api/images/{image_id}/share", body).status_code == 400, body
    assert alice.post(f"/api/images/{image_id}/share", {"username": "nobody"}
                      ).status_code == 404


def test_an_export_link_is_a_registry_token_for_that_image(cp_user, node, cp_chalice,
                                                            cp_services):
    alice, bob = cp_user("alice"), cp_user("bob")
    image_id, save = saved_image(alice, node, cp_chalice)
    link = alice.post(f"/api/images/{image_id}/export")
    assert link.status_code == 200, link.body
    assert link.json["url"].startswith("http://export.test:5002/export/")
    claims = jwt.decode(link.json["url"].rsplit("/", 1)[1],
                        options={"verify_signature": False})
    repository = parse_reference(save.image).repository
    assert claims["access"] == [{"type": "repository", "name": repository,
                                 "actions": ["pull"]}]
    assert claims[EXPORT_CLAIM]["repository"] == repository
    assert claims[EXPORT_CLAIM]["digest"] == "sha256:" + "7c" * 32
    assert claims["exp"] - claims["iat"] == cp_services.config.export_link_seconds
    assert bob.post(f"/api/images/{image_id}/export").status_code == 404
    catalog = next(i["id"] for i in alice.get("/api/images").json["images"]
                   if i["kind"] == "catalog")
    assert alice.post(f"/api/images/{catalog}/export").status_code == 409


def test_deleting_frees_the_manifest_and_the_grants(cp_user, node, cp_chalice,
                                                    cp_image_server, push_minimal):
    alice, bob = cp_user("alice"), cp_user("bob")

    def pushed(save) -> str:  # what the node does: a real manifest in the repository
        repository = parse_reference(save.image).repository
        digest = push_minimal(cp_image_server, repository)
        return f"{cp_image_server.address}/{repository}@{digest}"

    image_id, save = saved_image(alice, node, cp_chalice, reported=pushed)
    repository = parse_reference(save.image).repository
    (listed,) = [i for i in alice.get("/api/images").json["images"] if i["id"] == image_id]
    manifest = f"/v2/{repository}/manifests/{parse_reference(listed['image']).digest}"
    token = cp_image_server.token([repository_access(repository, PUSH)])
    assert cp_image_server.status(manifest, token) == 200
    alice.post(f"/api/images/{image_id}/share", {"username": "bob"})
    alice.post(f"/api/images/{image_id}/share", {"link": True})

    assert alice.delete(f"/api/images/{image_id}").status_code == 204
    assert cp_image_server.status(manifest, token) == 404
    assert image_id not in [i["id"] for i in alice.get("/api/images").json["images"]]
    assert image_id not in [i["id"] for i in bob.get("/api/images").json["images"]]
    assert alice.delete(f"/api/images/{image_id}").status_code == 404


def test_an_image_server_that_is_down_keeps_the_image(cp_user, node, cp_chalice, cp_services):
    alice = cp_user("alice")
    image_id, _ = saved_image(alice, node, cp_chalice)
    r = alice.delete(f"/api/images/{image_id}")  # nothing listens on the registry port
    assert r.status_code == 503 and "nothing was deleted" in r.json["error"]["message"]
    assert image_id in [i["id"] for i in alice.get("/api/images").json["images"]]


def test_a_save_reported_elsewhere_is_not_listed(cp_user, node, cp_chalice):
    alice = cp_user("alice")
    iid, _ = saved_image(alice, node, cp_chalice,
                         reported=lambda save: f"{parse_reference(save.image).registry}"
                         f"/users/bob/b1@sha256:{'00' * 32}")
    got = alice.get(f"/api/instances/{iid}").json
    assert got["state"] == "stopped" and "elsewhere" in got["reason"]
    assert not [i for i in alice.get("/api/images").json["images"] if i["kind"] == "saved"]


@pytest.fixture
def push_minimal():
    """Push a minimal image (one layer of zeros) with plain HTTP: the registry API is enough."""
    def push(server, repository: str) -> str:
        token = server.token([repository_access(repository, PUSH)])
        headers = {"Authorization": f"Bearer {token}"}

        def request(method: str, url: str, body: bytes = b"", extra: dict[str, str] | None = None):
            r = urllib.request.Request(  # noqa: S310 - the test registry
                url if url.startswith("http") else server.url + url,
                                       data=body if method in ("PUT", "POST") else None,
                                       method=method, headers={**headers, **(extra or {})})
            with urllib.request.urlopen(r, timeout=10) as answer:  # noqa: S310
                return answer.headers

        def blob(data: bytes) -> str:
            digest = "sha256:" + hashlib.sha256(data).hexdigest()
            location = request("POST", f"/v2/{repository}/blobs/uploads/")["Location"]
            separator = "&" if "?" in location else "?"
            request("PUT", f"{location}{separator}digest={digest}", data,
                    {"Content-Type": "application/octet-stream"})
            return digest

        layer = b"\0" * 1024
        config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {
            "type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(layer).hexdigest()]}
        }).encode()
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": blob(config), "size": len(config)},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                        "digest": blob(layer), "size": len(layer)}]}).encode()
        answer = request("PUT", f"/v2/{repository}/manifests/saved", manifest,
                         {"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
        return str(answer["Docker-Content-Digest"])

    return push


def test_a_save_mounts_its_source_only_while_the_owner_may_pull_it(cp_user, node, cp_chalice):
    alice, bob = cp_user("alice"), cp_user("bob")
    image_id, save = saved_image(alice, node, cp_chalice)
    source = parse_reference(save.image).repository
    alice.post(f"/api/images/{image_id}/share", {"username": "bob"})

    def launched() -> str:
        iid: str = bob.post("/api/instances", {"image_id": image_id}).json["id"]
        nid = node["node_id"]
        _event(cp_chalice, InstanceStateEvent(node_id=nid, instance_id=iid, state="running"),
               InstanceStateEvent(node_id=nid, instance_id=iid, state="stopped"))
        return iid

    def saved_with(iid: str) -> list[str]:
        assert bob.post(f"/api/instances/{iid}/save").status_code == 202
        token = _save_message(node["queue_url"]).registry.token
        return [a["name"] for a in jwt.decode(token, options={"verify_signature": False})[
            "access"]]

    first, second = launched(), launched()
    assert source in saved_with(first)
    alice.post(f"/api/images/{image_id}/share", {"username": "bob", "revoke": True})
    assert source not in saved_with(second)  # saved all the same, every layer uploaded
