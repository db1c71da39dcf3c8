import base64
import json
import time

import jwt
import pytest

from protocol import tokens as t
from protocol.errors import TokenError


@pytest.fixture
def key():
    return t.SigningKey.generate()


@pytest.fixture
def keys(key):
    return t.KeySet.from_jwks({"keys": [key.public_jwk()]})


def test_tunnel_token_binds_one_host(key, keys):
    token = key.sign(t.tunnel_claims(issuer="p", instance_id="i1", hostname="I1.localhost:8080"))
    assert t.verify_tunnel(token, keys, hostname="i1.localhost:8080")["sub"] == "i1"
    with pytest.raises(TokenError, match="another host"):
        t.verify_tunnel(token, keys, hostname="i2.localhost:8080")


def test_alg_none_is_refused(key, keys):
    claims = t.tunnel_claims(issuer="p", instance_id="i1", hostname="h")
    def b64(d):
        return base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()
    forged = f"{b64({'alg': 'none', 'kid': key.kid})}.{b64(claims)}."
    with pytest.raises(TokenError, match="not accepted"):
        t.verify_tunnel(forged, keys, hostname="h")


def test_hs256_with_public_key_as_secret_is_refused(key, keys):
    claims = t.tunnel_claims(issuer="p", instance_id="i1", hostname="h")
    forged = jwt.encode(claims, "a-long-enough-hmac-secret-for-pyjwt-32b", algorithm="HS256",
                        headers={"kid": key.kid})
    with pytest.raises(TokenError):
        t.verify_tunnel(forged, keys, hostname="h")


def test_other_key_and_unknown_kid_are_refused(keys):
    other = t.SigningKey.generate()
    token = other.sign(t.tunnel_claims(issuer="p", instance_id="i1", hostname="h"))
    with pytest.raises(TokenError, match="unknown key"):
        t.verify_tunnel(token, keys, hostname="h")
    assert other.kid not in keys


def test_forged_signature_with_known_kid_is_refused(key, keys):
    other = t.SigningKey.generate()
    token = jwt.encode(t.tunnel_claims(issuer="p", instance_id="i1", hostname="h"),
                       other.private_key, algorithm="ES256", headers={"kid": key.kid})
    with pytest.raises(TokenError, match="signature"):
        t.verify_tunnel(token, keys, hostname="h")


def test_expired_token_is_refused(key, keys):
    claims = t.tunnel_claims(issuer="p", instance_id="i1", hostname="h", lifetime=10,
                             now=time.time() - 3600)
    with pytest.raises(TokenError, match="expired"):
        t.verify_tunnel(key.sign(claims), keys, hostname="h")


def test_node_token_lifetime_is_bounded(key, keys):
    claims = t.node_claims(node_id="n1")
    assert t.verify_node(key.sign(claims), keys, node_id="n1")["jti"]
    claims["exp"] = claims["iat"] + 3600
    with pytest.raises(TokenError, match="lifetime"):
        t.verify_node(key.sign(claims), keys, node_id="n1")
    with pytest.raises(TokenError):
        t.verify_node(key.sign(t.node_claims(node_id="n2")), keys, node_id="n1")


def test_kid_is_rfc7638_thumbprint_and_pem_round_trips(key):
    assert t.thumbprint(key.public_jwk()) == key.kid
    again = t.SigningKey.from_pem(key.to_pem())
    assert again.kid == key.kid


def test_bad_jwks_are_refused():
    for doc in ({}, {"keys": "x"}, {"keys": [{"kid": "a", "kty": "oct", "k": "c2VjcmV0"}]}):
        with pytest.raises(TokenError):
            t.KeySet.from_jwks(doc)


def test_access_token_is_bound_to_one_instance_and_short(key, keys):
    token = key.sign(t.access_claims(issuer="p", instance_id="i1", username="alice",
                                     client_id="c1", lifetime=3600))
    claims = t.verify_access(token, keys, instance_id="i1")
    assert claims["sub"] == "alice"
    assert claims["exp"] - claims["iat"] == t.ACCESS_TOKEN_MAX_LIFETIME
    with pytest.raises(TokenError, match="another audience"):
        t.verify_access(token, keys, instance_id="i2")


def test_long_lived_access_token_is_refused(key, keys):
    now = int(time.time())
    claims = {**t.access_claims(issuer="p", instance_id="i1", username="a", client_id="c"),
              "exp": now + 3600}
    with pytest.raises(TokenError, match="lifetime"):
        t.verify_access(key.sign(claims), keys, instance_id="i1")


def test_expired_access_token_is_refused(key, keys):
    claims = t.access_claims(issuer="p", instance_id="i1", username="a", client_id="c",
                             now=time.time() - 400)
    with pytest.raises(TokenError, match="expired"):
        t.verify_access(key.sign(claims), keys, instance_id="i1")


def test_pkce_challenge_matches_rfc_7636_appendix_b():
    verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
    assert t.pkce_challenge(verifier) == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


def test_revocation_tokens_are_not_access_tokens(key, keys):
    revocation = key.sign(t.revocation_claims(issuer="p", instance_id="i1", username="sam"))
    assert t.verify_revocation(revocation, keys, instance_id="i1", issuer="p")["sub"] == "sam"
    with pytest.raises(TokenError, match="another issuer"):
        t.verify_revocation(revocation, keys, instance_id="i1", issuer="https://evil.example")
    with pytest.raises(TokenError, match="another audience"):
        t.verify_access(revocation, keys, instance_id="i1")
    access = key.sign(t.access_claims(issuer="p", instance_id="i1", username="sam",
                                      client_id="c"))
    with pytest.raises(TokenError, match="another audience"):
        t.verify_revocation(access, keys, instance_id="i1", issuer="p")
    with pytest.raises(TokenError, match="another audience"):
        t.verify_revocation(revocation, keys, instance_id="i2", issuer="p")
