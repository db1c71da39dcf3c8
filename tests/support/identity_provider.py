"""A real OpenID Connect provider on loopback (and a GitHub-shaped one) for login tests.

:class:`IdentityProvider` auto-approves whoever it is told is logged in (``subject``, ``email``,
``email_verified``, ``github_id``) and signs real RS256 ID tokens; ``mode`` makes it forge one
(wrong nonce, audience, issuer, an expired one, ``alg: none``, another key with the same kid).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from protocol.tokens import SigningKey

CLIENT_ID, CLIENT_SECRET = "portal-client", "portal-secret"


@functools.cache
def _rsa(n: int) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


class IdentityProvider:
    """An OIDC (and GitHub-shaped) provider: see the module docstring."""

    def __init__(self) -> None:
        self.key = SigningKey("k1", _rsa(0))
        self.other = SigningKey("k1", _rsa(1))  # same kid, another key: a forgery
        self.codes: dict[str, dict[str, str]] = {}
        self.mode = "good"
        self.subject = "Alice.Smith"
        self.email = "alice@uni.example"
        self.email_verified: bool | None = True
        self.github_id: int = 583231
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _json(self, body: Any, status: int = 200) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                url = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                if url.path == "/.well-known/openid-configuration":
                    self._json({"issuer": provider.base, "jwks_uri": provider.base + "/jwks",
                                "authorization_endpoint": provider.base + "/authorize",
                                "token_endpoint": provider.base + "/token"})
                elif url.path == "/jwks":
                    self._json({"keys": [provider.key.public_jwk()]})
                elif url.path in ("/authorize", "/login/oauth/authorize"):
                    code = uuid.uuid4().hex
                    provider.codes[code] = query
                    self.send_response(302)
                    self.send_header("Location", query["redirect_uri"] + "?" + urlencode(
                        {"code": code, "state": query["state"]}))
                    self.end_headers()
                elif url.path == "/user":
                    ok = self.headers.get("Authorization") == "Bearer gh-token"
                    self._json({"login": provider.subject, "id": provider.github_id} if ok
                               else {}, 200 if ok else 401)
                else:
                    self._json({}, 404)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
                grant = provider.codes.pop(form.get("code", ""), None)
                if grant is None or form.get("client_secret") != CLIENT_SECRET:
                    self._json({"error": "invalid_grant"}, 400)
                    return
                if self.path == "/login/oauth/access_token":
                    self._json({"access_token": "gh-token", "token_type": "bearer"})
                    return
                challenge = base64.urlsafe_b64encode(hashlib.sha256(
                    form["code_verifier"].encode()).digest()).rstrip(b"=").decode()
                if challenge != grant["code_challenge"]:
                    self._json({"error": "invalid_grant"}, 400)
                    return
                self._json({"id_token": provider.id_token(grant["nonce"]),
                            "access_token": "x", "token_type": "Bearer"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def id_token(self, nonce: str) -> str:
        now = int(time.time())
        claims = {"iss": self.base, "aud": CLIENT_ID, "sub": self.subject, "iat": now,
                  "exp": now + 300, "nonce": nonce, "email": self.email}
        if self.email_verified is not None:
            claims["email_verified"] = self.email_verified
        mode = self.mode
        if mode == "wrong_nonce":
            claims["nonce"] = "other"
        elif mode == "expired":
            claims.update(iat=now - 3600, exp=now - 1800)
        elif mode == "wrong_aud":
            claims["aud"] = "someone-else"
        elif mode == "wrong_iss":
            claims["iss"] = "https://evil.example"
        elif mode == "alg_none":
            return jwt.encode(claims, None, algorithm="none", headers={"kid": "k1"})  # type: ignore[arg-type]
        elif mode == "other_key":
            return self.other.sign(claims)
        return self.key.sign(claims)

    def providers(self, **oidc: str) -> str:
        """``DIT4C_LOGIN_PROVIDERS`` naming this provider as ``uni`` (OIDC, ``oidc`` added to
        its entry) and ``github``."""
        return json.dumps([
            {"name": "uni", "kind": "oidc", "display_name": "University", "issuer": self.base,
             "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, **oidc},
            {"name": "github", "kind": "github", "client_id": CLIENT_ID,
             "client_secret": CLIENT_SECRET, "github_url": self.base, "api_url": self.base}])


@contextmanager
def identity_provider() -> Iterator[IdentityProvider]:
    provider = IdentityProvider()
    provider.thread.start()
    try:
        yield provider
    finally:
        provider.server.shutdown()
        provider.server.server_close()
