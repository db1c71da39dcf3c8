"""The OAuth2 server wired into the real control plane exactly as docs/oauth.md says: the real
``Services`` (KeyStore signer, tables, shares, ``can_access``), the scheduler registering each
launched instance through ``OAuthServer.register``, sessions from ``POST /api/login``.

Until ``control_plane/app.py`` registers the blueprint itself, a second Chalice app here carries
it beside the real one; both share the process's services.
"""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Iterator
from urllib.parse import parse_qs, urlencode, urlsplit

import boto3
import pytest
from chalice.app import Chalice
from chalice.test import Client

from control_plane import oauth_routes, services, web
from control_plane.bootstrap import ensure_local_defaults
from control_plane.catalog import CatalogEntry
from control_plane.config import Config
from control_plane.keys import KeyStore
from control_plane.oauth import OAuthServer
from control_plane.services import Services
from control_plane.table import Table
from protocol.messages import InstanceStateEvent, StartInstance, decode
from protocol.tokens import KeySet, SigningKey, pkce_challenge, verify_access
from tests.functional.conftest import ADMIN_PASSWORD, USER_PASSWORD, CPClient

CATALOG = [CatalogEntry(name="Busybox", image="dit4c/test-tool:busybox", port=8080, cpu=1,
                        memory_mb=256, tags=[])]


def session_username(request):
    found = web.session_of(request, services.current().accounts.session)
    return found.user.username if found else None


@pytest.fixture
def wired(cp_env, monkeypatch) -> Iterator[tuple[Services, Client, Client]]:
    for name, value in cp_env.items():
        monkeypatch.setenv(name, value)
    config = Config.from_env(cp_env)
    ddb = boto3.client("dynamodb", region_name="us-east-1")
    # Its own KeyStore over the same SSM parameter, as another Lambda process would have.
    keys = KeyStore(boto3.client("ssm", region_name="us-east-1"), config.signing_key_parameter)
    oauth = OAuthServer(clients=Table(ddb, config.tables.oauth_clients),
                        tokens=Table(ddb, config.tables.tokens), signer=keys,
                        issuer=config.portal_url,
                        can_access=lambda u, i: services.current().can_access(u, i))
    svc = Services.build(config, registrar=oauth)
    services.use(svc)
    oauth_app = Chalice(app_name="oauth-wiring")
    oauth_app.register_blueprint(oauth_routes.oauth_blueprint(
        get_server=lambda: oauth, session_username=session_username))
    from control_plane.app import app

    with Client(app) as api, Client(oauth_app) as portal:
        yield svc, api, portal
    services.use(None)


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

    # Another user: 403 page. Shared with: in. Share revoked: the refresh is refused.
    assert authorize(portal, bob, start, pkce_challenge("x" * 43)).status_code == 403
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
