"""The auth helper's pieces in-process: https cookies, the open-redirect guard, cookie stripping,
the bounded store of logins in progress."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict, CIMultiDictProxy

from helpers.auth.app import AuthHelper
from helpers.auth.config import AuthConfig
from helpers.auth.errors import ConfigError
from helpers.auth.proxy import _response_headers, strip_cookies
from helpers.auth.sessions import SessionStore
from protocol import pod
from protocol.tokens import pkce_challenge


def config(public_url: str, instance_id: str = "abc",
           authorize_url: str = "https://portal.example/oauth/authorize") -> AuthConfig:
    return AuthConfig.from_env({
        pod.ENV_AUTH_LISTEN: "127.0.0.1:7781", pod.ENV_AUTH_UPSTREAM: "http://127.0.0.1:8888",
        pod.ENV_INSTANCE_ID: instance_id, pod.ENV_PUBLIC_URL: public_url,
        pod.ENV_OAUTH_CLIENT_ID: "instance-abc", pod.ENV_OAUTH_CLIENT_SECRET: "s3cret",
        pod.ENV_OAUTH_AUTHORIZE_URL: authorize_url,
        pod.ENV_OAUTH_TOKEN_URL: "http://host.docker.internal:8000/oauth/token",
        pod.ENV_OAUTH_JWKS_URL: "http://host.docker.internal:8000/.well-known/jwks.json",
    })


@pytest.mark.parametrize("instance_id", ["ABC", "a-b", "x" * 64])
def test_an_instance_id_off_the_id_rule_fails_at_start(instance_id: str):
    with pytest.raises(ConfigError, match=pod.ENV_INSTANCE_ID):
        config("http://abc.localhost:8080", instance_id)


def test_the_portals_issuer_comes_from_its_authorize_url():
    assert config("http://abc.localhost:8080").issuer == "https://portal.example"
    with pytest.raises(ConfigError, match=pod.ENV_OAUTH_AUTHORIZE_URL):
        config("http://abc.localhost:8080", authorize_url="https://portal.example/authorize")


def test_under_https_cookies_are_secure_and_host_prefixed():
    helper = AuthHelper(config("https://abc.apps.example"))
    response = helper.start_login(make_mocked_request("GET", "/lab?x=1"))
    cookie = response.cookies["__Host-dit4c-login"]
    assert cookie["secure"] and cookie["httponly"] and cookie["samesite"] == "Lax"
    assert cookie["path"] == "/" and not cookie["domain"]
    location = urlsplit(response.headers["Location"])
    query = {k: v[0] for k, v in parse_qs(location.query).items()}
    assert location.netloc == "portal.example"
    assert query["redirect_uri"] == "https://abc.apps.example" + pod.CALLBACK_PATH
    assert query["code_challenge_method"] == "S256" and query["client_id"] == "instance-abc"
    nonce = cookie.value
    assert helper.sessions.finish_login(query["state"], "another browser") is None
    login = helper.sessions.finish_login(query["state"], nonce)
    assert login is not None and login.next_path == "/lab?x=1"
    assert pkce_challenge(login.verifier) == query["code_challenge"]
    assert helper.sessions.finish_login(query["state"], nonce) is None  # a state works once


def test_under_http_cookies_are_not_secure():
    helper = AuthHelper(config("http://abc.localhost:8080"))
    response = helper.start_login(make_mocked_request("GET", "/"))
    cookie = response.cookies["dit4c-login"]
    assert not cookie["secure"] and cookie["httponly"]


def test_strip_cookies_keeps_the_tools_own():
    names = {"dit4c-auth", "dit4c-login", "__Host-dit4c-auth"}
    header = "a=1; dit4c-auth=xyz; _xsrf=2|ab; __Host-dit4c-auth=q;dit4c-login=n"
    assert strip_cookies(header, names) == "a=1; _xsrf=2|ab"
    assert strip_cookies("dit4c-auth=x", names) == ""


def test_tool_cannot_set_the_helpers_cookies():
    upstream = CIMultiDict([("Set-Cookie", "dit4c-auth=evil; Path=/"),
                            ("Set-Cookie", "__Host-dit4c-auth=evil; Path=/; Secure"),
                            ("Set-Cookie", "theme=dark; Path=/"),
                            ("Connection", "keep-alive, X-Private"), ("X-Private", "1"),
                            ("Content-Type", "text/plain")])
    kept = _response_headers(CIMultiDictProxy(upstream), {"dit4c-auth", "__Host-dit4c-auth"})
    assert kept.getall("Set-Cookie") == ["theme=dark; Path=/"]
    assert "X-Private" not in kept and "Connection" not in kept
    assert kept["Content-Type"] == "text/plain"


def test_sign_in_starts_keep_no_state():
    store = SessionStore()
    first = store.start_login("n", "/")
    for _ in range(5000):
        store.start_login("m", "/")
    assert store.finish_login(first.state, "n") is not None  # nothing pushed it out
    assert not store._finished.keys() - {first.state}


def test_a_state_is_bound_to_its_browser_and_untampered():
    store = SessionStore()
    login = store.start_login("n", "/lab")
    payload, mac = login.state.split(".")
    assert store.finish_login(login.state, "other") is None
    assert store.finish_login(payload + "x." + mac, "n") is None
    assert store.finish_login(login.state, None) is None
    assert SessionStore().finish_login(login.state, "n") is None  # another helper's key


def test_logins_in_progress_expire():
    now = [1000.0]
    store = SessionStore(clock=lambda: now[0])
    login = store.start_login("n", "/")
    now[0] += 601
    assert store.finish_login(login.state, "n") is None
