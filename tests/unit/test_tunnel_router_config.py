"""The router's configuration from the environment: defaults, and errors that name the setting."""

from __future__ import annotations

import pytest

from edge_router.config import RouterConfig
from edge_router.errors import ConfigError

BASE = {"DIT4C_ROUTER_DOMAIN": "Example.ORG.", "DIT4C_ROUTER_JWKS_URL": "http://cp/jwks"}


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
])
def test_a_bad_setting_fails_start_up_naming_it(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        RouterConfig.from_env({**BASE, **env})
