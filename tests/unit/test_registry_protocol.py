"""protocol.registry: references as Docker splits them, scopes as Docker's token spec writes them,
and claims in the shape Distribution 2.8 verifies."""

from __future__ import annotations

import pytest

from protocol.errors import RegistryError
from protocol.registry import (
    PUSH,
    Access,
    Reference,
    check_repository,
    parse_reference,
    parse_scope,
    registry_claims,
    repository_access,
)

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(("text", "expected"), [
    ("busybox", Reference("", "busybox")),
    ("dit4c/test-tool:busybox", Reference("", "dit4c/test-tool", "busybox")),
    ("127.0.0.1:5001/users/alice/k1:saved",
     Reference("127.0.0.1:5001", "users/alice/k1", "saved")),
    (f"localhost/a/b@{DIGEST}", Reference("localhost", "a/b", None, DIGEST)),
    (f"registry.example.org/a:1@{DIGEST}", Reference("registry.example.org", "a", "1", DIGEST)),
])
def test_references(text: str, expected: Reference):
    assert parse_reference(text) == expected
    assert str(expected) == text


def test_pinned_prefers_the_digest():
    assert parse_reference(f"r.test/a:1@{DIGEST}").pinned == DIGEST
    assert parse_reference("r.test/a:1").pinned == "1"
    assert parse_reference("r.test/a").pinned == "latest"


@pytest.mark.parametrize("text", ["Upper/case", "a//b", "a/", "-a", "a@sha256:12", "a:-x",
                                  "a/b:" + "t" * 200, "x" * 256])
def test_bad_references(text: str):
    with pytest.raises(RegistryError):
        parse_reference(text)


def test_repository_names_follow_distribution():
    assert check_repository("users/a.b/c__d/e-f")
    for bad in ("users/a@b", "users/a./b", "users/.a", "users/a..b"):
        with pytest.raises(RegistryError):
            check_repository(bad)


def test_scopes():
    assert parse_scope("repository:users/alice/k1:pull,push") == Access(
        "repository", "users/alice/k1", ("pull", "push"))
    assert parse_scope("repository(plugin):a/b:pull") == Access("repository", "a/b", ("pull",))
    assert parse_scope("registry:catalog:*") == Access("registry", "catalog", ("*",))
    assert repository_access("a/b", PUSH).scope() == "repository:a/b:pull,push"
    for bad in ("", "repository", "repository:a", ":a:pull"):
        with pytest.raises(RegistryError):
            parse_scope(bad)


def test_claims_have_the_shape_the_registry_verifies():
    claims = registry_claims(issuer="http://portal", service="svc", subject="alice",
                             access=[repository_access("a/b", PUSH)], lifetime=60, now=1000)
    assert claims["aud"] == "svc"  # a string: Distribution 2.8 refuses a list
    assert (claims["iat"], claims["nbf"], claims["exp"]) == (1000, 1000, 1060)
    assert claims["access"] == [{"type": "repository", "name": "a/b",
                                 "actions": ["pull", "push"]}]
