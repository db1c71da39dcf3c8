"""The portal's signing keys, kept in one SSM SecureString parameter.

The parameter holds ``{"keys": [{"kid", "pem", "created_at"}, ...], "registry_ca": {"pem",
"certificate", "created_at"}}``, keys newest last. The newest key signs; every listed key is
published in the JWKS, so tokens signed by an older key keep verifying until that key is
retired. Rotation (``rotate`` then, once the old tokens have expired, ``retire``) therefore
never breaks a token already issued.

The image server cannot read a JWKS (Distribution 2.8 trusts a certificate bundle read at its
start), so tokens for it (:meth:`KeyStore.sign_with_chain`) carry in their ``x5c`` header a
short-lived certificate for the current key made by the registry CA
(``control_plane/registry_ca.py``); the registry's bundle is that CA's certificate
(:meth:`KeyStore.registry_ca`). Rotation thus works for the registry too, untouched.

The first call that needs a key creates the parameter (``Overwrite=False``: when two cold starts
race, the loser reads the winner's key), with the CA. A parameter written before the CA existed
gets one at the first call that needs it (a read-modify-write: two processes racing there may
each use their own CA until their cache expires; only the stored one is in the registry's
bundle, so start the registry after the first token was signed, as the local stack does).
Keys are cached per process for ``cache_seconds``.
"""

from __future__ import annotations

import base64
import datetime
import json
import threading
import time
from typing import Any

from cryptography.hazmat.primitives import serialization

from control_plane.errors import Conflict, NotFound
from control_plane.registry_ca import LEAF_LIFETIME, CertificateAuthority
from protocol.tokens import SigningKey

LEAF_RENEW_BEFORE = datetime.timedelta(days=1)
"""A cached leaf certificate is replaced when it has less than this left."""


class KeyStore:
    """Signing keys in SSM parameter ``name`` (SecureString) via an SSM client."""

    def __init__(self, ssm: Any, name: str, *, cache_seconds: float = 60.0) -> None:
        self._ssm = ssm
        self._name = name
        self._cache_seconds = cache_seconds
        self._cached: list[SigningKey] | None = None
        self._ca: CertificateAuthority | None = None
        self._leaves: dict[str, tuple[str, datetime.datetime]] = {}
        """kid -> (base64 DER leaf certificate, its expiry)."""
        self._loaded_at = 0.0
        self._lock = threading.Lock()

    def keys(self) -> list[SigningKey]:
        """Every published key, oldest first (created on first use)."""
        with self._lock:
            return list(self._fresh()[0])

    def registry_ca(self) -> CertificateAuthority:
        """The CA whose certificate is the image server's ``rootcertbundle``."""
        with self._lock:
            return self._fresh()[1]

    def _fresh(self) -> tuple[list[SigningKey], CertificateAuthority]:
        if self._cached is None or self._ca is None \
                or time.monotonic() - self._loaded_at > self._cache_seconds:
            self._cached, self._ca = self._load_or_create()
            self._loaded_at = time.monotonic()
        return self._cached, self._ca

    def current(self) -> SigningKey:
        return self.keys()[-1]

    def sign(self, claims: dict[str, Any]) -> str:
        return self.current().sign(claims)

    def sign_with_chain(self, claims: dict[str, Any]) -> str:
        """Sign with the current key, its registry-CA certificate in the ``x5c`` header."""
        with self._lock:
            keys, ca = self._fresh()
            key = keys[-1]
            now = datetime.datetime.now(datetime.UTC)
            leaf = self._leaves.get(key.kid)
            if leaf is None or leaf[1] - now < LEAF_RENEW_BEFORE:
                certificate = ca.certify(key.private_key.public_key(), key.kid, now)
                der = certificate.public_bytes(serialization.Encoding.DER)
                leaf = (base64.b64encode(der).decode(), now + LEAF_LIFETIME)
                self._leaves[key.kid] = leaf
        return key.sign(claims, headers={"x5c": [leaf[0]]})

    def jwks(self) -> dict[str, Any]:
        return {"keys": [k.public_jwk() for k in self.keys()]}

    def rotate(self) -> SigningKey:
        """Add a new signing key; the old ones stay published."""
        new = SigningKey.generate()
        document = self._read()
        self._save({**document, "keys": [*document.get("keys", []), _entry(new)]})
        return new

    def retire(self, kid: str) -> None:
        """Stop publishing ``kid``; refuses to retire the only (signing) key."""
        document = self._read()
        entries = document.get("keys", [])
        remaining = [e for e in entries if e["kid"] != kid]
        if len(remaining) == len(entries):
            raise NotFound(f"no signing key {kid!r}")
        if not remaining or entries[-1]["kid"] == kid:
            raise Conflict("the current signing key cannot be retired; rotate first")
        self._save({**document, "keys": remaining})

    def check(self) -> None:
        """Health probe: the keys can be loaded. From the cache while it is fresh: anyone may
        call ``/api/health``, and each uncached call would be an SSM read (throttled and
        billed per call)."""
        self.keys()

    # --- storage ----------------------------------------------------------------------

    def _load_or_create(self) -> tuple[list[SigningKey], CertificateAuthority]:
        document = self._read()
        if not document.get("keys"):
            first = {"keys": [_entry(SigningKey.generate())],
                     "registry_ca": _ca_entry(CertificateAuthority.generate())}
            try:
                self._ssm.put_parameter(Name=self._name, Value=json.dumps(first),
                                        Type="SecureString", Overwrite=False)
                document = first
            except self._ssm.exceptions.ParameterAlreadyExists:
                document = self._read()
        if "registry_ca" not in document:  # written before the image server had tokens
            document = {**document, "registry_ca": _ca_entry(CertificateAuthority.generate())}
            self._put(document)
            document = self._read()
        ca = document["registry_ca"]
        return ([SigningKey.from_pem(e["pem"], e["kid"]) for e in document["keys"]],
                CertificateAuthority.from_pem(ca["pem"], ca["certificate"]))

    def _read(self) -> dict[str, Any]:
        try:
            response = self._ssm.get_parameter(Name=self._name, WithDecryption=True)
        except self._ssm.exceptions.ParameterNotFound:
            return {}
        document: dict[str, Any] = json.loads(response["Parameter"]["Value"])
        return document

    def _put(self, document: dict[str, Any]) -> None:
        self._ssm.put_parameter(Name=self._name, Value=json.dumps(document),
                                Type="SecureString", Overwrite=True)

    def _save(self, document: dict[str, Any]) -> None:
        self._put(document)
        with self._lock:  # this process sees the change now; others within cache_seconds
            self._cached = None


def _entry(key: SigningKey) -> dict[str, Any]:
    return {"kid": key.kid, "pem": key.to_pem(), "created_at": int(time.time())}


def _ca_entry(ca: CertificateAuthority) -> dict[str, Any]:
    return {"pem": ca.key_pem(), "certificate": ca.pem(), "created_at": int(time.time())}
