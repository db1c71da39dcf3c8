"""The OAuth2 server as the control plane wires it (``Services.oauth``, the blueprint in
``control_plane/app.py``): the real ``Services`` (KeyStore signer, tables, shares, access), the
scheduler registering each launched instance through ``OAuthServer.register``, sessions from
``POST /api/login``, all through the real Chalice app.
"""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Iterator
from urllib.parse import parse_qs, urlencode, urlsplit

import boto3
import pytest
from chalice.test import Client

from control_plane.bodies import NewImage
from control_plane.bootstrap import ensure_local_defaults
from control_plane.oauth import OAuthServer
from control_plane.services import Services
from protocol.messages import InstanceStateEvent, StartInstance, decode
from protocol.tokens import KeySet, SigningKey, pkce_challenge, verify_access
from tests.functional.conftest import ADMIN_PASSWORD, USER_PASSWORD, CPClient

CATALOG = [NewImage(name="Busybox", image="dit4c/test-tool:busybox", port=8080, cpu=1,
                    memory_mb=256, tags=[])]


@pytest.fixture
def wired(cp_services: Services, cp_chalice: Client) -> Iterator[tuple[Services, Client, Client]]:
    assert isinstance(cp_services.oauth, OAuthServer)
    assert cp_services.registrar is cp_services.oauth
    yield cp_services, cp_chalice, cp_chalice


def browser(api: Client, username: str, password: str = USER_PASSWORD) -> CPClient:
    client = CPClient(api)
    assert client.login(username, password).status_code == 200
    return client


def authorize(portal: Client, who: CPClient, start: StartInstance, challenge: str):
    query = urlencode({"response_type": "code", "client_id": start.oauth.client_id,
                       "redirect_uri": start.url + "/.dit4c/auth/callback", "state": "s",
                       "code_challenge": challenge, "code_challenge_method": "S256"})
    return portal.http.get(f"/oauth/authorize?{query}",
                           headers={"cookie": who.cookie or "", "accept": "text/html"})


def token(portal: Client, start: StartInstance, form: dict[str, str]):
    raw = f"{start.oauth.client_id}:{start.oauth.client_secret}".encode()
    response = portal.http.post("/oauth/token", body=urlencode(form), headers={
        "content-type": "application/x-www-form-urlencoded",
        "authorization": "Basic " + base64.b64encode(raw).decode()})
    return response.status_code, json.loads(response.body)


def sign_in(portal: Client, who: CPClient, start: StartInstance):
    verifier = secrets.token_urlsafe(48)
    response = authorize(portal, who, start, pkce_challenge(verifier))
    assert response.status_code == 302, response.body
    code = parse_qs(urlsplit(response.headers["Location"]).query)["code"][0]
    return token(portal, start, {"grant_type": "authorization_code", "code": code,
                                 "redirect_uri": start.url + "/.dit4c/auth/callback",
                                 "code_verifier": verifier})


def test_launch_registers_the_client_and_the_portal_session_signs_in(wired):
    svc, api, portal = wired
    local = ensure_local_defaults(ADMIN_PASSWORD, CATALOG, svc)
    node = CPClient(api).post("/api/nodes/enroll", {
        "join_token": local.join_token, "public_jwk": SigningKey.generate().public_jwk(),
        "name": "n1", "cpu": 2, "memory_mb": 1024}).json
    admin = browser(api, "admin", ADMIN_PASSWORD)
    for name in ("alice", "bob"):
        assert admin.post("/api/users", {"username": name,
                                         "password": USER_PASSWORD}).status_code == 201
    alice, bob = browser(api, "alice"), browser(api, "bob")
    image = next(i["id"] for i in alice.get("/api/images").json["images"])
    iid = alice.post("/api/instances", {"image_id": image}).json["id"]
    sqs = boto3.client("sqs", region_name="us-east-1")
    (message,) = sqs.receive_message(QueueUrl=node["queue_url"])["Messages"]
    start = decode(message["Body"])
    assert isinstance(start, StartInstance) and start.instance_id == iid

    # The owner signs in with the credentials the node received; the token verifies against
    # the JWKS the real app publishes.
    status, body = sign_in(portal, alice, start)
    assert status == 200, body
    keys = KeySet.from_jwks(json.loads(api.http.get("/.well-known/jwks.json").body))
    claims = verify_access(body["access_token"], keys, instance_id=iid,
                           issuer=svc.config.portal_url)
    assert claims["sub"] == "alice"

    # Another user: 403 page; an admin too (admins manage instances through the API, but a
    # user's tool opens only for the people its owner chose). Shared with: in. Share revoked:
    # the refresh is refused.
    assert authorize(portal, bob, start, pkce_challenge("x" * 43)).status_code == 403
    assert authorize(portal, admin, start, pkce_challenge("x" * 43)).status_code == 403
    assert alice.post(f"/api/instances/{iid}/share", {"username": "bob"}).status_code == 200
    status, bobs = sign_in(portal, bob, start)
    assert status == 200, bobs
    alice.post(f"/api/instances/{iid}/share", {"username": "bob", "revoke": True})
    status, body = token(portal, start, {"grant_type": "refresh_token",
                                         "refresh_token": bobs["refresh_token"]})
    assert (status, body["error"]) == (400, "invalid_grant")

    # Discarding the instance forgets its client: even the owner's refresh now fails.
    _, owners = sign_in(portal, alice, start)
    assert alice.post(f"/api/instances/{iid}/stop").status_code == 202
    stopped = InstanceStateEvent(node_id=node["node_id"], instance_id=iid, state="stopped")
    api.lambda_.invoke("on_event", api.events.generate_sqs_event([stopped.encode()]))
    assert alice.post(f"/api/instances/{iid}/discard").status_code == 202
    status, body = token(portal, start, {"grant_type": "refresh_token",
                                         "refresh_token": owners["refresh_token"]})
    assert (status, body["error"]) == (401, "invalid_client")
