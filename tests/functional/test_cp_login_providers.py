"""Login through identity providers: a real OIDC provider on loopback issuing signed ID tokens,
and a GitHub-shaped one; then the attacks on the flow."""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import jwt
import pytest
import requests
from chalice.test import Client
from cryptography.hazmat.primitives.asymmetric import rsa

from control_plane import services
from control_plane.app import app
from control_plane.aws import Clients
from control_plane.config import Config
from control_plane.services import Services
from protocol.tokens import SigningKey

from .conftest import CPClient, cp_boto_session

CLIENT_ID, CLIENT_SECRET = "portal-client", "portal-secret"


@functools.cache
def _rsa(n: int) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


class Provider:
    """An OIDC (and GitHub-shaped) provider: auto-approves ``subject``; ``mode`` forges."""

    def __init__(self) -> None:
        self.key = SigningKey("k1", _rsa(0))
        self.other = SigningKey("k1", _rsa(1))  # same kid, another key: a forgery
        self.codes: dict[str, dict[str, str]] = {}
        self.mode = "good"
        self.subject = "Alice.Smith"
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
                    self._json({"login": provider.subject} if ok else {}, 200 if ok else 401)
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
                  "exp": now + 300, "nonce": nonce, "email": "alice@uni.example"}
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


@pytest.fixture
def idp() -> Iterator[Provider]:
    provider = Provider()
    provider.thread.start()
    yield provider
    provider.server.shutdown()
    provider.server.server_close()


@pytest.fixture
def cp_login(cp_env: dict[str, str], idp: Provider) -> Iterator[CPClient]:
    env = {**cp_env, "DIT4C_LOGIN_PROVIDERS": json.dumps([
        {"name": "uni", "kind": "oidc", "display_name": "University", "issuer": idp.base,
         "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET},
        {"name": "github", "kind": "github", "client_id": CLIENT_ID,
         "client_secret": CLIENT_SECRET, "github_url": idp.base, "api_url": idp.base}])}
    config = Config.from_env(env)
    services.use(Services.build(config, Clients(config, session=cp_boto_session())))
    with Client(app) as client:
        yield CPClient(client)
    services.use(None)


def _flow(browser: CPClient, name: str, next_path: str = "/") -> Any:
    start = browser.get(f"/api/login/{name}?" + urlencode({"next": next_path}))
    assert start.status_code == 302, start.body
    headers = {k.lower(): v for k, v in start.headers.items()}
    binding = headers["set-cookie"].split(";", 1)[0]
    at_idp = requests.get(headers["location"], allow_redirects=False, timeout=10)
    back = urlsplit(at_idp.headers["Location"])
    assert back.path == f"/api/login/{name}/callback"
    return browser.get(f"{back.path}?{back.query}", headers={"cookie": binding})


def test_providers_are_listed(cp_login):
    names = [p["name"] for p in cp_login.get("/api/login/providers").json["providers"]]
    assert names == ["uni", "github"]


def test_oidc_login_with_a_real_signed_id_token(cp_login):
    done = _flow(cp_login, "uni", "/portal/after")
    assert done.status_code == 302, done.body
    headers = {k.lower(): v for k, v in done.headers.items()}
    assert headers["location"] == "/portal/after"
    cookies = headers["set-cookie"]
    assert any(c.startswith("dit4c_session=") and "HttpOnly" in c for c in cookies)
    assert any(c.startswith("dit4c_login=;") for c in cookies)  # the binding is cleared
    me = cp_login.get("/api/me").json["user"]
    assert me == {"username": "alice.smith@uni", "admin": False, "provider": "uni"}


def test_github_login(cp_login, idp):
    idp.subject = "octocat"
    done = _flow(cp_login, "github")
    assert done.status_code == 302, done.body


@pytest.mark.parametrize("mode", ["wrong_nonce", "expired", "wrong_aud", "wrong_iss",
                                  "alg_none", "other_key"])
def test_forged_id_tokens_are_refused(cp_login, idp, mode):
    idp.mode = mode
    done = _flow(cp_login, "uni")
    assert done.status_code == 401, (mode, done.body)
    assert done.json["error"]["code"] == "unauthorized"


def test_callback_in_another_browser_or_twice_is_refused(cp_login):
    start = cp_login.get("/api/login/uni")
    headers = {k.lower(): v for k, v in start.headers.items()}
    binding = headers["set-cookie"].split(";", 1)[0]
    back = urlsplit(requests.get(headers["location"], allow_redirects=False,
                                 timeout=10).headers["Location"])
    path = f"{back.path}?{back.query}"
    assert cp_login.get(path).status_code == 401  # no binding cookie: login CSRF
    assert cp_login.get(path, headers={"cookie": binding}).status_code == 302
    assert cp_login.get(path, headers={"cookie": binding}).status_code == 401  # replay


def test_open_redirects_are_refused(cp_login):
    for evil in ("https://evil.example/", "//evil.example", "/\\evil.example"):
        done = _flow(cp_login, "uni", evil)
        assert {k.lower(): v for k, v in done.headers.items()}["location"] == "/"


def test_unknown_provider_is_404(cp_login):
    assert cp_login.get("/api/login/nope").status_code == 404
