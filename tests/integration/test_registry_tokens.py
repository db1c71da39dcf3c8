"""The real image server (Debian's docker-registry, Distribution 2.8) accepts exactly the tokens
the portal's keys sign: chain-signed by the current key, for the right service and issuer, not
expired, and only for the access they name. Rotating the signing key needs no registry restart.
Every refusal is an attack performed against the real registry."""

from __future__ import annotations

import base64
import contextlib
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import docker.errors
import pytest
from cryptography.hazmat.primitives import serialization

from control_plane.keys import KeyStore
from control_plane.registry_ca import CertificateAuthority
from protocol.registry import PULL, PUSH, Access, registry_claims, repository_access
from protocol.tokens import SigningKey
from tests.support.registry import RegistryServer, key_store

REPO = "users/alice/k1"


@pytest.fixture(scope="module")
def keys() -> Iterator[KeyStore]:
    with key_store() as store:  # its own: this module rotates keys
        yield store


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, keys: KeyStore) -> Iterator[RegistryServer]:
    registry = RegistryServer(tmp_path_factory.mktemp("registry"), keys).start()
    yield registry
    registry.stop()


def manifests(repository: str = REPO) -> str:
    return f"/v2/{repository}/manifests/latest"


def test_a_token_for_the_repository_is_accepted(server: RegistryServer):
    token = server.token([repository_access(REPO, PULL)])
    assert server.status(manifests(), token) == 404  # authorized; nothing pushed yet
    assert server.status("/v2/", token) == 200
    assert server.status(manifests()) == 401


def test_no_access_beyond_the_claim(server: RegistryServer):
    token = server.token([repository_access(REPO, PULL)])
    assert server.status(manifests("users/bob/k1"), token) == 401
    assert server.status(f"/v2/{REPO}/blobs/uploads/", token, "POST") == 401  # pull is not push
    assert server.status(manifests(), token, "DELETE") == 401


@pytest.mark.parametrize("bad", ["issuer", "service", "expired", "foreign_ca", "no_chain",
                                 "tampered"])
def test_forged_or_stale_tokens_are_refused(server: RegistryServer, keys: KeyStore, bad: str):
    access = [repository_access(REPO, PULL)]
    if bad == "issuer":
        token = server.token(access, issuer="http://evil.test")
    elif bad == "service":
        token = server.token(access, service="another-registry")
    elif bad == "expired":
        claims = registry_claims(issuer=server.issuer, service=server.service, subject="x",
                                 access=access, now=time.time() - 3600, lifetime=60)
        token = keys.sign_with_chain(claims)
    elif bad == "foreign_ca":  # a key and CA of the attacker's own: the chain does not verify
        other = CertificateAuthority.generate()
        key = SigningKey.generate()
        leaf = other.certify(key.private_key.public_key(), key.kid)
        der = base64.b64encode(leaf.public_bytes(serialization.Encoding.DER)).decode()
        claims = registry_claims(issuer=server.issuer, service=server.service, subject="x",
                                 access=access)
        token = key.sign(claims, headers={"x5c": [der]})
    elif bad == "no_chain":  # the current key, but only its kid: not a libtrust key id
        claims = registry_claims(issuer=server.issuer, service=server.service, subject="x",
                                 access=access)
        token = keys.sign(claims)
    else:  # the claims changed after signing: pull on someone else's repository
        head, body, signature = server.token(access).split(".")
        claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        claims["access"][0]["name"] = "users/bob/k1"
        forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
        token = f"{head}.{forged}.{signature}"
        assert server.status(manifests("users/bob/k1"), token) == 401
    assert server.status(manifests(), token) == 401


def test_rotation_needs_no_registry_restart(server: RegistryServer, keys: KeyStore):
    before = keys.current().kid
    old_token = server.token([repository_access(REPO, PULL)])
    keys.rotate()
    assert keys.current().kid != before
    new_token = server.token([repository_access(REPO, PULL)])
    assert server.status(manifests(), new_token) == 404
    assert server.status(manifests(), old_token) == 404  # issued before: still good
    keys.retire(before)
    assert server.status(manifests(), server.token([repository_access(REPO, PULL)])) == 404


@pytest.mark.docker
def test_the_engine_pushes_and_pulls_with_tokens(server: RegistryServer,
                                                 docker_client: docker.DockerClient,
                                                 tool_image: str, tmp_path: Path):
    reference = f"{server.address}/{REPO}"
    tag = uuid.uuid4().hex[:8]
    docker_client.images.get(tool_image).tag(reference, tag)
    try:
        refused = server.token([repository_access("users/alice/other", PUSH)])
        events = list(docker_client.api.push(reference, tag=tag, stream=True, decode=True,
                                             auth_config={"registrytoken": refused}))
        assert any("denied" in e.get("error", "") for e in events), events
        push = server.token([repository_access(REPO, PUSH)])
        events = list(docker_client.api.push(reference, tag=tag, stream=True, decode=True,
                                             auth_config={"registrytoken": push}))
        assert not [e for e in events if "error" in e], events
        docker_client.images.remove(f"{reference}:{tag}")
        pull = server.token([Access("repository", REPO, ("pull",))])
        docker_client.images.pull(reference, tag=tag, auth_config={"registrytoken": pull})
    finally:
        with contextlib.suppress(docker.errors.ImageNotFound):
            docker_client.images.remove(f"{reference}:{tag}", force=True)
