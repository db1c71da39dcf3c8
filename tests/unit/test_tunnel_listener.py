"""The listener helper's settings and reconnect backoff."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers.auth.config import AuthConfig
from helpers.listener.__main__ import SettingsError, settings
from helpers.listener.links import BACKOFF_CAP, backoff
from helpers.listener.tokens import TunnelToken, write
from protocol import pod
from scripts import images

GOOD = {pod.ENV_TUNNEL_TOKEN: "t", pod.ENV_ROUTER_URLS: "ws://a/.dit4c/tunnel, wss://b/x",
        pod.ENV_HOSTNAME: "Abc.Example.org", pod.ENV_UPSTREAM: "127.0.0.1:7781"}


def test_settings_are_read_and_normalised() -> None:
    token, urls, hostname, upstream = settings(GOOD)
    assert (token.value, token.path, urls, hostname, upstream) == (
        "t", None, ["ws://a/.dit4c/tunnel", "wss://b/x"], "abc.example.org",
        ("127.0.0.1", 7781))
    assert settings({**GOOD, pod.ENV_TUNNEL_TOKEN_FILE: "/run/t"})[0].path == "/run/t"


def test_a_renewed_token_is_taken_from_its_file_once(tmp_path: Path) -> None:
    path = str(tmp_path / "token")
    token = TunnelToken("first", path)
    sent: list[str] = []
    token.subscribe(sent.append)
    assert not token.poll()  # no file yet
    write(path, "second")
    assert token.poll() and token.value == "second" and sent == ["second"]
    assert not token.poll()  # unchanged
    write(path, "second")
    assert not token.poll() and sent == ["second"]  # the same token again: nothing to send


@pytest.mark.parametrize(("name", "value"), [
    (pod.ENV_TUNNEL_TOKEN, ""), (pod.ENV_ROUTER_URLS, "http://a/"),
    (pod.ENV_UPSTREAM, "nohost"), (pod.ENV_UPSTREAM, "h:port"), (pod.ENV_HOSTNAME, " "),
])
def test_a_bad_setting_is_named(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        settings({**GOOD, name: value})


AUTH = {pod.ENV_AUTH_LISTEN: "127.0.0.1:7781", pod.ENV_AUTH_UPSTREAM: "http://127.0.0.1:8888",
        pod.ENV_INSTANCE_ID: "abc", pod.ENV_PUBLIC_URL: "http://abc.example.org",
        pod.ENV_OAUTH_CLIENT_ID: "c", pod.ENV_OAUTH_CLIENT_SECRET: "s",
        pod.ENV_OAUTH_AUTHORIZE_URL: "http://p/oauth/authorize",
        pod.ENV_OAUTH_TOKEN_URL: "http://p/oauth/token",
        pod.ENV_OAUTH_JWKS_URL: "http://p/.well-known/jwks.json"}


def test_with_the_auth_helpers_settings_it_serves_streams_in_process() -> None:
    tunnel = {k: v for k, v in GOOD.items() if k != pod.ENV_UPSTREAM}
    *_, upstream = settings({**tunnel, **AUTH})
    assert isinstance(upstream, AuthConfig)
    assert upstream.upstream == "http://127.0.0.1:8888" and upstream.listen_port == 7781
    with pytest.raises(SettingsError, match=pod.ENV_OAUTH_CLIENT_SECRET):
        settings({**tunnel, **AUTH, pod.ENV_OAUTH_CLIENT_SECRET: ""})


def test_backoff_grows_with_jitter_and_is_capped() -> None:
    lows = [backoff(n, rand=lambda a, b: a) for n in range(12)]
    highs = [backoff(n, rand=lambda a, b: b) for n in range(12)]
    assert lows[0] == 0.125 and highs[0] == 0.25
    assert all(h == 2 * lo for lo, h in zip(lows, highs, strict=True))
    assert highs == sorted(highs) and max(highs) == BACKOFF_CAP
    assert backoff(1000) <= BACKOFF_CAP


def test_the_helpers_uid_is_the_images_user() -> None:
    # The node makes the listener's token tmpfs for this uid; the image builder makes the user.
    assert pod.HELPERS_UID == images.HELPERS_UID
