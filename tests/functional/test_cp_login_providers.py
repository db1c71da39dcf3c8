"""Login through identity providers: a real OIDC provider on loopback issuing signed ID tokens,
and a GitHub-shaped one; then the attacks on the flow."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlencode, urlsplit

import pytest
import requests
from chalice.test import Client

from control_plane import services
from control_plane.app import app
from control_plane.aws import Clients
from control_plane.config import Config
from control_plane.services import Services
from tests.support.identity_provider import IdentityProvider, identity_provider

from .conftest import CPClient


@pytest.fixture
def idp() -> Iterator[IdentityProvider]:
    with identity_provider() as provider:
        yield provider


@pytest.fixture
def cp_login(cp_env: dict[str, str], cp_clients: Callable[[Config], Clients],
             idp: IdentityProvider) -> Iterator[CPClient]:
    env = {**cp_env, "DIT4C_LOGIN_PROVIDERS": idp.providers()}
    config = Config.from_env(env)
    services.use(Services.build(config, cp_clients(config)))
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
    assert me == {"username": "alice.smith@uni", "admin": False, "provider": "uni",
                  "display_name": "Alice.Smith"}


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
