"""The control plane's configuration: every missing or malformed setting is named."""

import pytest

from control_plane.config import REQUIRED, Config
from control_plane.errors import ConfigError
from control_plane.login_providers import parse_providers

BASE = {name: f"value-{name.lower()}" for name in REQUIRED}
BASE["DIT4C_PORTAL_URL"] = "https://portal.example/"
BASE["DIT4C_ROUTER_DOMAIN"] = "Apps.Example."


def test_defaults_and_derived_values():
    config = Config.from_env(BASE)
    assert config.portal_url == "https://portal.example"
    assert config.pod_portal_url == config.portal_url
    assert config.secure_cookies
    assert config.instance_hostname("abc") == "abc.apps.example"
    assert config.instance_url("abc") == "https://abc.apps.example"
    assert config.max_running_per_user == 4


def test_public_port_and_pod_portal():
    config = Config.from_env({**BASE, "DIT4C_ROUTER_SCHEME": "http",
                              "DIT4C_ROUTER_PUBLIC_PORT": "8080",
                              "DIT4C_POD_PORTAL_URL": "http://host.docker.internal:8000"})
    assert config.instance_url("abc") == "http://abc.apps.example:8080"
    assert config.pod_portal_url == "http://host.docker.internal:8000"


@pytest.mark.parametrize("name", REQUIRED)
def test_missing_settings_are_named(name):
    env = dict(BASE)
    del env[name]
    with pytest.raises(ConfigError, match=name):
        Config.from_env(env)


@pytest.mark.parametrize(("name", "value"), [
    ("DIT4C_PORTAL_URL", "portal.example"),
    ("DIT4C_ROUTER_SCHEME", "ftp"),
    ("DIT4C_ROUTER_PUBLIC_PORT", "eighty"),
    ("DIT4C_ROUTER_PUBLIC_PORT", "70000"),
    ("DIT4C_MAX_RUNNING_PER_USER", "0"),
    ("DIT4C_ROUTER_TUNNEL_URLS", "http://router/tunnel"),
    ("DIT4C_POD_PORTAL_URL", "nope"),
])
def test_bad_values_are_named(name, value):
    with pytest.raises(ConfigError, match=name):
        Config.from_env({**BASE, name: value})


def test_bad_login_providers_are_named():
    with pytest.raises(ConfigError, match="DIT4C_LOGIN_PROVIDERS"):
        parse_providers('[{"name": "x", "kind": "oidc"}]')
    with pytest.raises(ConfigError, match="DIT4C_LOGIN_PROVIDERS"):
        parse_providers("not json")
    assert set(parse_providers('[{"name": "gh", "kind": "github", "client_id": "a", '
                               '"client_secret": "b"}]')) == {"gh"}
