"""The router's deployment files are real and agree with its code: the systemd unit passes
``systemd-analyze verify``, the example settings name only settings the router reads, and the
configuration reference in docs/edge-router.md lists every setting it reads."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from edge_router.config import RouterConfig

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "edge_router" / "dit4c-router.service"
ENV_FILE = ROOT / "edge_router" / "router.env"
PYTHON = "/opt/dit4c/router/bin/python"
"""Where docs/edge-router.md installs the router's virtualenv: not on this machine."""


class _Recording(Mapping[str, str]):
    """An environment that remembers every name the config asks for."""

    def __init__(self, values: dict[str, str]) -> None:
        self._values, self.asked = values, set[str]()

    def __getitem__(self, name: str) -> str:
        self.asked.add(name)
        return self._values[name]

    def get(self, name: str, default: object = None) -> object:  # type: ignore[override]
        self.asked.add(name)
        return self._values.get(name, default)

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)


def settings_read() -> set[str]:
    env = _Recording({"DIT4C_ROUTER_DOMAIN": "example.org",
                      "DIT4C_ROUTER_JWKS_URL": "https://portal/.well-known/jwks.json"})
    RouterConfig.from_env(env)
    return env.asked


def test_the_configuration_reference_lists_every_setting() -> None:
    text = (ROOT / "docs" / "edge-router.md").read_text()
    section = text.split("\n## Configuration", 1)[1].split("\n## ", 1)[0]
    documented = {name for line in section.splitlines() if line.startswith("|")
                  for name in re.findall(r"`(DIT4C_[A-Z_]+)`", line)}
    assert documented == settings_read()


def test_the_example_settings_are_settings() -> None:
    names = {line.split("=", 1)[0] for line in ENV_FILE.read_text().splitlines()
             if line and not line.startswith("#")}
    unknown = {n for n in names if not n.startswith("AWS_")} - settings_read()
    assert not unknown, f"{ENV_FILE.name} names settings the router never reads: {unknown}"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze (Debian's systemd) is not installed")
def test_the_systemd_unit_verifies() -> None:
    done = subprocess.run(["systemd-analyze", "verify", str(UNIT)], capture_output=True,
                          text=True, timeout=30, check=False)
    problems = [line for line in (done.stdout + done.stderr).splitlines() if line
                and f"Command {PYTHON} is not executable" not in line]
    assert not problems, "\n".join(problems)
    service = UNIT.read_text()
    assert f"ExecStart={PYTHON} -m edge_router\n" in service
    assert "ExecReload=/bin/kill -HUP $MAINPID\n" in service
    assert "EnvironmentFile=/etc/dit4c/router.env\n" in service
