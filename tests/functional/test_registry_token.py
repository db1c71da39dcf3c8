"""``GET /registry/token``: who gets which scopes (Docker's token protocol), through the API.

The tokens themselves are verified by the real registry in
``tests/integration/test_registry_tokens.py``; here the claims are read back and the chain is
checked against ``/registry/ca.pem`` the way the registry does.
"""

from __future__ import annotations

import base64
import dataclasses
from typing import Any

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from control_plane import services
from control_plane.bodies import NewImage
from control_plane.bootstrap import ensure_local_defaults
from control_plane.registry import user_repository
from control_plane.services import Services
from protocol.tokens import SigningKey, node_claims

from .conftest import ADMIN_PASSWORD, USER_PASSWORD

REGISTRY = "registry.test:5000"


@pytest.fixture
def cp_env(cp_env: dict[str, str]) -> dict[str, str]:
    return {**cp_env, "DIT4C_REGISTRY": REGISTRY}


def basic(username: str, password: str = USER_PASSWORD) -> dict[str, str]:
    raw = base64.b64encode(f"{username}:{password}".encode()).decode()
    return {"authorization": f"Basic {raw}"}


def ask(client: Any, headers: dict[str, str], *scopes: str, service: str = "dit4c-registry"
        ) -> Any:
    query = "&".join([f"service={service}", *(f"scope={s}" for s in scopes)])
    return client.get(f"/registry/token?{query}", headers=headers)


def access_of(response: Any) -> dict[str, list[str]]:
    assert response.status_code == 200, response.body
    claims = jwt.decode(response.json["token"], options={"verify_signature": False})
    assert claims["aud"] == "dit4c-registry" and claims["exp"] - claims["iat"] <= 300
    return {a["name"]: a["actions"] for a in claims["access"]}


def test_anonymous_and_wrong_passwords_are_asked_to_log_in(cp_client, cp_user):
    cp_user("alice")
    for headers in ({}, basic("alice", "wrong-password"), {"authorization": "Basic !!"}):
        r = ask(cp_client(), headers, "repository:users/alice/x:pull")
        assert r.status_code == 401
        assert r.headers["WWW-Authenticate"].startswith("Basic ")


def test_a_user_pushes_only_into_their_own_namespace(cp_client, cp_user):
    cp_user("alice")
    cp_user("bob")
    got = access_of(ask(cp_client(), basic("alice"), "repository:users/alice/k1:pull,push",
                        "repository:users/bob/k1:pull,push", "repository:dit4c/helpers:pull"))
    assert got == {"users/alice/k1": ["pull", "push"]}


def test_usernames_that_are_no_path_component_get_a_namespace_of_their_own(cp_client, cp_user):
    cp_user("al@ce")
    mine = user_repository("al@ce", "k1")
    assert mine.startswith("users-x/")
    got = access_of(ask(cp_client(), basic("al@ce"), f"repository:{mine}:push",
                        "repository:users/al/k1:pull"))
    assert got == {mine: ["push"]}


def test_catalog_and_shared_images_can_be_pulled_not_pushed(cp_services, cp_client, cp_user):
    cp_user("alice")
    cp_user("bob")
    cp_services.catalog.add(NewImage(name="Tool", image=f"{REGISTRY}/catalog/tool:1",
                                     port=8080))
    cp_services.catalog.images.put({"image_id": "b1", "owner": "bob", "name": "bob's",
                                    "image": f"{REGISTRY}/users/bob/b1@sha256:{'a' * 64}",
                                    "repository": "users/bob/b1", "port": 8080, "cpu": 1.0,
                                    "memory_mb": 64, "created_at": "2026-01-01T00:00:00Z"})
    scopes = ("repository:catalog/tool:pull,push", "repository:users/bob/b1:pull,push")
    assert access_of(ask(cp_client(), basic("alice"), *scopes)) == {
        "catalog/tool": ["pull"]}
    cp_services.shares.grant("image", "b1", "alice", "bob")
    assert access_of(ask(cp_client(), basic("alice"), *scopes)) == {
        "catalog/tool": ["pull"], "users/bob/b1": ["pull"]}
    cp_services.shares.revoke("image", "b1", "alice")
    assert "users/bob/b1" not in access_of(ask(cp_client(), basic("alice"), *scopes))


def test_admins_publish_outside_the_user_namespaces(cp_services, cp_client, cp_admin):
    got = access_of(ask(cp_client(), basic("admin", ADMIN_PASSWORD),
                        "repository:dit4c/helpers:pull,push",
                        "repository:users/alice/k1:pull"))
    assert got == {"dit4c/helpers": ["pull", "push"]}


def test_nodes_pull_the_helpers_image_with_their_own_token(cp_services, cp_client):
    local = ensure_local_defaults("admin-password-1", [], cp_services)
    key = SigningKey.generate()
    node = cp_client().post("/api/nodes/enroll", {
        "join_token": local.join_token, "public_jwk": key.public_jwk(), "name": "n1",
        "cpu": 1, "memory_mb": 512}).json
    token = key.sign(node_claims(node_id=node["node_id"]))
    headers = {"authorization": f"Bearer {token}"}
    got = access_of(ask(cp_client(), headers, "repository:dit4c/helpers:pull,push",
                        "repository:users/alice/k1:pull"))
    assert got == {"dit4c/helpers": ["pull"]}
    assert ask(cp_client(), headers, "repository:dit4c/helpers:pull").status_code == 401  # replay
    forged = SigningKey.generate().sign(node_claims(node_id=node["node_id"]))
    assert ask(cp_client(), {"authorization": f"Bearer {forged}"},
               "repository:dit4c/helpers:pull").status_code == 401


def test_bad_requests(cp_client, cp_user):
    cp_user("alice")
    assert ask(cp_client(), basic("alice"), "repository:a/b:pull",
               service="other").status_code == 400
    assert ask(cp_client(), basic("alice"), "nonsense").status_code == 400
    too_many = [f"repository:users/alice/k{i}:pull" for i in range(30)]
    assert ask(cp_client(), basic("alice"), *too_many).status_code == 400
    # a malformed repository name is simply not granted
    assert access_of(ask(cp_client(), basic("alice"), "repository:Users/../x:pull")) == {}


def test_tokens_carry_a_chain_to_the_published_ca(cp_client, cp_user, cp_chalice):
    cp_user("alice")
    token = ask(cp_client(), basic("alice"), "repository:users/alice/k1:pull").json["token"]
    header = jwt.get_unverified_header(token)
    leaf = x509.load_der_x509_certificate(base64.b64decode(header["x5c"][0]))
    ca = x509.load_pem_x509_certificate(cp_chalice.http.get("/registry/ca.pem").body)
    leaf.verify_directly_issued_by(ca)
    public = leaf.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    jwt.decode(token, public, algorithms=["ES256"], audience="dit4c-registry")


def test_without_an_image_server_there_are_no_tokens(cp_env, cp_client, cp_user, cp_services):
    config = dataclasses.replace(cp_services.config, registry="")
    services.use(Services.build(config, cp_services.clients))
    cp_user("alice")
    assert ask(cp_client(), basic("alice"), "repository:users/alice/k1:pull").status_code == 409
