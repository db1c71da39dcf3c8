"""Token claims and their verification (contract: see ARCHITECTURE.md, "Identity and tokens").

Every token is a JWT signed with an asymmetric key (ES256 preferred, RS256 accepted) whose
header names its ``kid``; verifiers find the public key by ``kid`` in a JWKS. Nothing here trusts
the token's own ``alg``: the algorithm comes from the key, so ``alg: none`` and HS256-with-the-
public-key tricks fail.

Audiences, one per kind of token:

===========================  ==============================================================
``AUD_TUNNEL``               binds one tunnel to one hostname (claim ``host``); ``sub`` is the
                             instance id. Signed by the control plane, checked by routers;
                             at most an hour of life, renewed by the node.
``AUD_NODE``                 a node proving itself to ``/api/nodes/{id}/credentials``; signed
                             by the node's own key; ``iss`` = ``sub`` = node id; short and
                             single-use (``jti``).
``instance_audience(id)``    an access token for one instance, issued by the portal's OAuth2
                             server to that instance's auth helper.
``AUD_EVENT``                a node's signature on one message it puts on the shared events
                             queue (claim ``body``: the SHA-256 of the exact body); signed by
                             the node's own key; ``iss`` = ``sub`` = node id.
===========================  ==============================================================
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from protocol.errors import TokenError

AUD_TUNNEL = "dit4c:tunnel"
AUD_NODE = "dit4c:node-credentials"
AUD_EVENT = "dit4c:event"
ALGORITHMS = ("ES256", "RS256")
DEFAULT_LEEWAY_SECONDS = 30
NODE_TOKEN_MAX_LIFETIME = 300


def instance_audience(instance_id: str) -> str:
    return f"dit4c:instance:{instance_id}"


PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey


@dataclass(frozen=True)
class SigningKey:
    """A private key with its ``kid``; ``kid`` is the RFC 7638 thumbprint unless given."""

    kid: str
    private_key: PrivateKey

    @classmethod
    def generate(cls) -> SigningKey:
        key = ec.generate_private_key(ec.SECP256R1())
        return cls(thumbprint(public_jwk(key.public_key())), key)

    @classmethod
    def from_pem(cls, pem: str | bytes, kid: str | None = None) -> SigningKey:
        data = pem.encode() if isinstance(pem, str) else pem
        key = serialization.load_pem_private_key(data, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
            raise TokenError("signing key must be EC P-256 or RSA")
        return cls(kid or thumbprint(public_jwk(key.public_key())), key)

    def to_pem(self) -> str:
        return self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()

    @property
    def algorithm(self) -> str:
        return "ES256" if isinstance(self.private_key, ec.EllipticCurvePrivateKey) else "RS256"

    def public_jwk(self) -> dict[str, str]:
        return {**public_jwk(self.private_key.public_key()), "kid": self.kid,
                "alg": self.algorithm, "use": "sig"}

    def sign(self, claims: Mapping[str, Any], headers: Mapping[str, Any] | None = None) -> str:
        """A JWT of ``claims``; ``headers`` adds header members (``x5c`` for the registry)."""
        return jwt.encode(dict(claims), self.private_key, algorithm=self.algorithm,
                          headers={**(headers or {}), "kid": self.kid})


def public_jwk(key: PublicKey) -> dict[str, str]:
    """The public JWK members (no ``kid``) of an EC P-256 or RSA key."""
    text = jwt.algorithms.ECAlgorithm.to_jwk(key) if isinstance(
        key, ec.EllipticCurvePublicKey) else jwt.algorithms.RSAAlgorithm.to_jwk(key)
    jwk: dict[str, str] = json.loads(text)
    return {k: v for k, v in jwk.items() if k in ("kty", "crv", "x", "y", "n", "e")}


def thumbprint(jwk: Mapping[str, str]) -> str:
    """RFC 7638 JWK thumbprint (SHA-256, base64url) — a stable ``kid``."""
    members = ("crv", "kty", "x", "y") if jwk.get("kty") == "EC" else ("e", "kty", "n")
    try:
        canonical = json.dumps({m: jwk[m] for m in members}, separators=(",", ":"),
                               sort_keys=True)
    except KeyError as exc:
        raise TokenError(f"JWK lacks member {exc.args[0]!r}") from None
    digest = hashlib.sha256(canonical.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def load_public_jwk(jwk: Mapping[str, Any]) -> PublicKey:
    """Parse a public EC P-256 or RSA (>= 2048 bit) JWK; refuse anything else."""
    if not isinstance(jwk, Mapping):
        raise TokenError("JWK must be an object")
    key: Any
    try:
        if jwk.get("kty") == "EC" and jwk.get("crv") == "P-256":
            key = jwt.algorithms.ECAlgorithm.from_jwk(json.dumps(dict(jwk)))
        elif jwk.get("kty") == "RSA":
            key = jwt.algorithms.RSAAlgorithm.from_jwk(json.dumps(dict(jwk)))
        else:
            raise TokenError("JWK must be EC P-256 or RSA")
    except (ValueError, TypeError, KeyError, jwt.exceptions.InvalidKeyError) as exc:
        raise TokenError(f"invalid JWK: {exc}") from None
    if isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise TokenError("JWK must be a public key")
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < 2048:
        raise TokenError("RSA keys must be at least 2048 bits")
    if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        raise TokenError("JWK must be EC P-256 or RSA")
    return key


class KeySet:
    """Public keys by ``kid`` — what a verifier holds, built from a JWKS document."""

    def __init__(self, keys: Mapping[str, PublicKey]) -> None:
        self._keys = dict(keys)

    @classmethod
    def from_jwks(cls, document: Mapping[str, Any]) -> KeySet:
        entries = document.get("keys") if isinstance(document, Mapping) else None
        if not isinstance(entries, list):
            raise TokenError("JWKS must have a 'keys' list")
        keys: dict[str, PublicKey] = {}
        for entry in entries:
            if isinstance(entry, Mapping) and isinstance(entry.get("kid"), str):
                keys[entry["kid"]] = load_public_jwk(entry)
        return cls(keys)

    def __contains__(self, kid: object) -> bool:
        return kid in self._keys

    def get(self, kid: str) -> PublicKey | None:
        return self._keys.get(kid)


def unverified_kid(token: str) -> str:
    try:
        header = jwt.get_unverified_header(token)
    except jwt.exceptions.DecodeError:
        raise TokenError("malformed token") from None
    kid = header.get("kid")
    if not isinstance(kid, str):
        raise TokenError("token has no kid")
    if header.get("alg") not in ALGORITHMS:
        raise TokenError(f"token algorithm {header.get('alg')!r} is not accepted")
    return kid


def unverified_claims(token: str) -> dict[str, Any]:
    """A token's claims, **not verified**: for its holder, who reads its own token's times
    (when to renew it); never to decide anything about someone else's."""
    try:
        claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    except jwt.exceptions.DecodeError:
        raise TokenError("malformed token") from None
    return claims


def verify(
    token: str,
    keys: KeySet,
    *,
    audience: str,
    issuer: str | None = None,
    required: tuple[str, ...] = (),
    max_lifetime: int | None = None,
    leeway: int = DEFAULT_LEEWAY_SECONDS,
) -> dict[str, Any]:
    """Verify signature, ``exp``, ``aud`` (and ``iss``); return the claims or raise TokenError.

    ``max_lifetime`` bounds ``exp - iat`` so that a signer cannot mint a long-lived token where
    only short ones are allowed (node tokens).
    """
    kid = unverified_kid(token)
    key = keys.get(kid)
    if key is None:
        raise TokenError("token signed by an unknown key")
    alg = "ES256" if isinstance(key, ec.EllipticCurvePublicKey) else "RS256"
    try:
        claims: dict[str, Any] = jwt.decode(
            token, key, algorithms=[alg], audience=audience, issuer=issuer, leeway=leeway,
            options={"require": ["exp", "iat", *required]},
        )
    except jwt.exceptions.ExpiredSignatureError:
        raise TokenError("token expired") from None
    except jwt.exceptions.InvalidAudienceError:
        raise TokenError("token is for another audience") from None
    except jwt.exceptions.InvalidIssuerError:
        raise TokenError("token from another issuer") from None
    except jwt.exceptions.InvalidSignatureError:
        raise TokenError("token signature is invalid") from None
    except jwt.exceptions.InvalidTokenError as exc:
        raise TokenError(f"invalid token: {exc}") from None
    if max_lifetime is not None and claims["exp"] - claims["iat"] > max_lifetime:
        raise TokenError(f"token lifetime exceeds {max_lifetime} seconds")
    return claims


# --- claim builders: one per kind, so every signer writes the same shape --------------------


TUNNEL_TOKEN_MAX_LIFETIME = 3600
"""The longest a tunnel token may live; routers refuse longer ones. The node renews its
instances' tokens through the portal (only for an instance placed on it), so a token that
leaks, or that a node keeps after its instance moved, dies within this; and a router needs to
remember a revocation only this long (:data:`REVOCATION_KEEP_SECONDS`)."""
REVOCATION_KEEP_SECONDS = TUNNEL_TOKEN_MAX_LIFETIME + DEFAULT_LEEWAY_SECONDS
"""After this, no token issued before a revocation can pass any more: the entry may go."""


def tunnel_claims(*, issuer: str, instance_id: str, hostname: str,
                  lifetime: int = TUNNEL_TOKEN_MAX_LIFETIME,
                  now: float | None = None) -> dict[str, Any]:
    """A tunnel token for ``hostname``. ``iat`` has millisecond precision: routers refuse
    tokens issued at or before a revocation of their host, and the token of an instance placed
    again is issued within the same second as the revocation of its old placement."""
    iat = round(now if now is not None else time.time(), 3)
    return {"iss": issuer, "aud": AUD_TUNNEL, "sub": instance_id, "host": hostname.lower(),
            "iat": iat, "exp": int(iat) + min(lifetime, TUNNEL_TOKEN_MAX_LIFETIME),
            "jti": uuid.uuid4().hex}


def verify_tunnel(token: str, keys: KeySet, *, hostname: str, issuer: str | None = None,
                  leeway: int = DEFAULT_LEEWAY_SECONDS) -> dict[str, Any]:
    """Verify a tunnel token: it binds exactly ``hostname`` and lives at most
    :data:`TUNNEL_TOKEN_MAX_LIFETIME`."""
    claims = verify(token, keys, audience=AUD_TUNNEL, issuer=issuer, required=("sub", "host"),
                    max_lifetime=TUNNEL_TOKEN_MAX_LIFETIME, leeway=leeway)
    if claims["host"] != hostname.lower():
        raise TokenError("tunnel token is for another host")
    return claims


def host_digest(hostname: str) -> str:
    """How the public revocations list names a host (SHA-256, hex): a router can match the
    host a tunnel asks for, nobody can read off which instances were revoked."""
    return hashlib.sha256(hostname.lower().encode()).hexdigest()


def node_claims(*, node_id: str, lifetime: int = 120, now: float | None = None) -> dict[str, Any]:
    iat = int(now if now is not None else time.time())
    return {"iss": node_id, "sub": node_id, "aud": AUD_NODE, "iat": iat,
            "exp": iat + min(lifetime, NODE_TOKEN_MAX_LIFETIME), "jti": uuid.uuid4().hex}


def verify_node(token: str, keys: KeySet, *, node_id: str) -> dict[str, Any]:
    """Verify a node's self-signed token; the caller must also refuse a ``jti`` seen before."""
    claims = verify(token, keys, audience=AUD_NODE, issuer=node_id, required=("sub", "jti"),
                    max_lifetime=NODE_TOKEN_MAX_LIFETIME)
    if claims["sub"] != node_id:
        raise TokenError("token is for another node")
    return claims


EVENT_SIGNATURE_LIFETIME = 4 * 24 * 3600
"""An event's signature must outlive the message: the events queue keeps one for up to four
days (SQS's default retention) while its consumer is away."""


def body_digest(body: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(body.encode()).digest()).rstrip(b"=").decode()


def event_claims(*, node_id: str, body: str, now: float | None = None) -> dict[str, Any]:
    """A node's signature on one events-queue message: binds the exact ``body`` to the node."""
    iat = int(now if now is not None else time.time())
    return {"iss": node_id, "sub": node_id, "aud": AUD_EVENT, "iat": iat,
            "exp": iat + EVENT_SIGNATURE_LIFETIME, "body": body_digest(body)}


def verify_event(token: str, keys: KeySet, *, node_id: str, body: str) -> dict[str, Any]:
    """Verify that node ``node_id`` (its key in ``keys``) signed exactly ``body``."""
    claims = verify(token, keys, audience=AUD_EVENT, issuer=node_id, required=("sub", "body"),
                    max_lifetime=EVENT_SIGNATURE_LIFETIME)
    if claims["sub"] != node_id:
        raise TokenError("event signed for another node")
    if not isinstance(claims["body"], str) or claims["body"] != body_digest(body):
        raise TokenError("event signature is for another message")
    return claims


ACCESS_TOKEN_MAX_LIFETIME = 300
"""Upper bound of an instance access token's life: how long a revoked user may keep access."""


def access_claims(*, issuer: str, instance_id: str, username: str, client_id: str,
                  lifetime: int = ACCESS_TOKEN_MAX_LIFETIME,
                  now: float | None = None) -> dict[str, Any]:
    """An access token for one instance, signed by the portal's OAuth2 server for its helper."""
    iat = int(now if now is not None else time.time())
    return {"iss": issuer, "aud": instance_audience(instance_id), "sub": username,
            "client_id": client_id, "iat": iat,
            "exp": iat + min(lifetime, ACCESS_TOKEN_MAX_LIFETIME), "jti": uuid.uuid4().hex}


def verify_access(token: str, keys: KeySet, *, instance_id: str, issuer: str | None = None,
                  leeway: int = DEFAULT_LEEWAY_SECONDS) -> dict[str, Any]:
    """Verify an instance access token: this instance's audience, a user, a short life."""
    claims = verify(token, keys, audience=instance_audience(instance_id), issuer=issuer,
                    required=("sub",), max_lifetime=ACCESS_TOKEN_MAX_LIFETIME, leeway=leeway)
    if not isinstance(claims["sub"], str) or not claims["sub"]:
        raise TokenError("access token names no user")
    return claims


def revocation_audience(instance_id: str) -> str:
    return f"dit4c:instance:{instance_id}:revoke"


ALL_USERS = "*"
"""``sub`` of a revocation that ends every session of the instance."""


def revocation_claims(*, issuer: str, instance_id: str, username: str = ALL_USERS,
                      lifetime: int = 60, now: float | None = None) -> dict[str, Any]:
    """The portal tells an instance's auth helper to end ``username``'s sessions now."""
    iat = int(now if now is not None else time.time())
    return {"iss": issuer, "aud": revocation_audience(instance_id), "sub": username,
            "iat": iat, "exp": iat + min(lifetime, ACCESS_TOKEN_MAX_LIFETIME),
            "jti": uuid.uuid4().hex}


def verify_revocation(token: str, keys: KeySet, *, instance_id: str,
                      issuer: str) -> dict[str, Any]:
    """A revocation for this instance (its own audience: an access token is not one) from
    ``issuer``. Single use is the receiver's part: remember ``jti`` until ``exp``."""
    return verify(token, keys, audience=revocation_audience(instance_id), issuer=issuer,
                  required=("sub", "jti"), max_lifetime=ACCESS_TOKEN_MAX_LIFETIME)


def pkce_challenge(verifier: str) -> str:
    """The PKCE S256 ``code_challenge`` of ``verifier`` (RFC 7636 4.2): helper and portal agree."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
