"""The node daemon's ``run`` settings (``node_daemon.config.RunSettings``): the pod sandboxes'."""

from __future__ import annotations

import pytest

from node_daemon.config import RunSettings
from node_daemon.errors import ConfigError


def settings(**env: str) -> RunSettings:
    return RunSettings.from_sources({}, env)


def test_sandboxes_keep_a_storage_helper_unless_told_not_to():
    assert settings().sandbox_storage is True
    assert settings(DIT4C_NODE_SANDBOX_STORAGE="on").sandbox_storage is True
    assert settings(DIT4C_NODE_SANDBOX_STORAGE="off").sandbox_storage is False


def test_a_bad_sandbox_setting_names_its_variable():
    with pytest.raises(ConfigError, match="DIT4C_NODE_SANDBOX_STORAGE must be on or off"):
        settings(DIT4C_NODE_SANDBOX_STORAGE="yes")
    with pytest.raises(ConfigError, match="DIT4C_NODE_SANDBOXES must be a whole number"):
        settings(DIT4C_NODE_SANDBOXES="17")
