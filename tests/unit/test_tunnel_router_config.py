"""The router's configuration from the environment: defaults, and errors that name the setting."""

from __future__ import annotations

import pytest

from edge_router.config import RouterConfig
from edge_router.errors import ConfigError

BASE = {"DIT4C_ROUTER_DOMAIN": "Example.ORG.", "DIT4C_ROUTER_JWKS_URL": "http://cp/jwks"}
TLS = {"DIT4C_ROUTER_TLS_LISTEN": "0.0.0.0:443", "DIT4C_ROUTER_TLS_CERT": "/etc/c.pem",
       "DIT4C_ROUTER_TLS_KEY": "/etc/k.pem"}


def test_defaults_and_lists() -> None:
    config = RouterConfig.from_env({**BASE, "DIT4C_ROUTER_LISTEN": "127.0.0.1:8080, [::1]:81",
                                    "DIT4C_ROUTER_METRICS_LISTEN": "127.0.0.1:9100",
                                    "DIT4C_ROUTER_ACCESS_LOG": "0"})
    assert config.domain == "example.org"
    assert config.listen == (("127.0.0.1", 8080), ("::1", 81))
    assert config.metrics_listen == ("127.0.0.1", 9100)
    assert config.max_streams == 256 and not config.access_log
    assert config.revocations_queue_url is None


@pytest.mark.parametrize(("env", "named"), [
    ({"DIT4C_ROUTER_DOMAIN": ""}, "DIT4C_ROUTER_DOMAIN"),
    ({"DIT4C_ROUTER_JWKS_URL": " "}, "DIT4C_ROUTER_JWKS_URL"),
    ({"DIT4C_ROUTER_LISTEN": "8080"}, "DIT4C_ROUTER_LISTEN"),
    ({"DIT4C_ROUTER_MAX_STREAMS": "many"}, "DIT4C_ROUTER_MAX_STREAMS"),
    ({"DIT4C_ROUTER_IDLE_TIMEOUT": "-1"}, "DIT4C_ROUTER_IDLE_TIMEOUT"),
    ({"DIT4C_ROUTER_TLS_LISTEN": "0.0.0.0:443"}, "DIT4C_ROUTER_TLS_LISTEN"),
    ({"DIT4C_ROUTER_REDIRECT_LISTEN": "0.0.0.0:80"}, "DIT4C_ROUTER_REDIRECT_LISTEN"),
    ({**TLS, "DIT4C_ROUTER_HTTPS_PORT": "0"}, "DIT4C_ROUTER_HTTPS_PORT"),
])
def test_a_bad_setting_fails_start_up_naming_it(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        RouterConfig.from_env({**BASE, **env})


def test_a_public_host_serves_https_only_unless_asked() -> None:
    config = RouterConfig.from_env({**BASE, **TLS, "DIT4C_ROUTER_REDIRECT_LISTEN": "[::]:80"})
    assert config.listen == () and config.tls_listen == (("0.0.0.0", 443),)  # noqa: S104
    assert config.redirect_listen == (("::", 80),) and config.https_port is None
    assert RouterConfig.from_env(BASE).listen == (("127.0.0.1", 8080),)
    both = RouterConfig.from_env({**BASE, **TLS, "DIT4C_ROUTER_LISTEN": "127.0.0.1:8080",
                                  "DIT4C_ROUTER_HTTPS_PORT": "8443"})
    assert both.listen == (("127.0.0.1", 8080),) and both.https_port == 8443
