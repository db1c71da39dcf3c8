"""The portal's signing keys, kept in one SSM SecureString parameter.

The parameter holds ``{"keys": [{"kid", "pem", "created_at"}, ...]}``, newest last. The newest
key signs; every listed key is published in the JWKS, so tokens signed by an older key keep
verifying until that key is retired. Rotation (``rotate`` then, once the old tokens have
expired, ``retire``) therefore never breaks a token already issued.

The first call that needs a key creates the parameter (``Overwrite=False``: when two cold starts
race, the loser reads the winner's key). Keys are cached per process for ``cache_seconds``.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

from control_plane.errors import Conflict, NotFound
from protocol.tokens import SigningKey


class KeyStore:
    """Signing keys in SSM parameter ``name`` (SecureString) via an SSM client."""

    def __init__(self, ssm: Any, name: str, *, cache_seconds: float = 60.0) -> None:
        self._ssm = ssm
        self._name = name
        self._cache_seconds = cache_seconds
        self._cached: list[SigningKey] | None = None
        self._loaded_at = 0.0
        self._lock = threading.Lock()

    def keys(self) -> list[SigningKey]:
        """Every published key, oldest first (created on first use)."""
        with self._lock:
            if self._cached is None or time.monotonic() - self._loaded_at > self._cache_seconds:
                self._cached = self._load_or_create()
                self._loaded_at = time.monotonic()
            return list(self._cached)

    def current(self) -> SigningKey:
        return self.keys()[-1]

    def sign(self, claims: dict[str, Any]) -> str:
        return self.current().sign(claims)

    def jwks(self) -> dict[str, Any]:
        return {"keys": [k.public_jwk() for k in self.keys()]}

    def rotate(self) -> SigningKey:
        """Add a new signing key; the old ones stay published."""
        new = SigningKey.generate()
        self._save([*self._read(), _entry(new)])
        return new

    def retire(self, kid: str) -> None:
        """Stop publishing ``kid``; refuses to retire the only (signing) key."""
        entries = self._read()
        remaining = [e for e in entries if e["kid"] != kid]
        if len(remaining) == len(entries):
            raise NotFound(f"no signing key {kid!r}")
        if not remaining or entries[-1]["kid"] == kid:
            raise Conflict("the current signing key cannot be retired; rotate first")
        self._save(remaining)

    def check(self) -> None:
        """Health probe: the keys can be loaded. From the cache while it is fresh: anyone may
        call ``/api/health``, and each uncached call would be an SSM read (throttled and
        billed per call)."""
        self.keys()

    # --- storage ----------------------------------------------------------------------

    def _load_or_create(self) -> list[SigningKey]:
        entries = self._read()
        if not entries:
            first = [_entry(SigningKey.generate())]
            try:
                self._ssm.put_parameter(Name=self._name, Value=json.dumps({"keys": first}),
                                        Type="SecureString", Overwrite=False)
                entries = first
            except self._ssm.exceptions.ParameterAlreadyExists:
                entries = self._read()
        return [SigningKey.from_pem(e["pem"], e["kid"]) for e in entries]

    def _read(self) -> list[dict[str, Any]]:
        try:
            response = self._ssm.get_parameter(Name=self._name, WithDecryption=True)
        except self._ssm.exceptions.ParameterNotFound:
            return []
        entries: list[dict[str, Any]] = json.loads(response["Parameter"]["Value"])["keys"]
        return entries

    def _save(self, entries: list[dict[str, Any]]) -> None:
        self._ssm.put_parameter(Name=self._name, Value=json.dumps({"keys": entries}),
                                Type="SecureString", Overwrite=True)
        with self._lock:  # this process sees the change now; others within cache_seconds
            self._cached = None


def _entry(key: SigningKey) -> dict[str, Any]:
    return {"kid": key.kid, "pem": key.to_pem(), "created_at": int(time.time())}
