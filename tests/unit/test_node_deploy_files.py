"""The node's deployment files are real: the systemd unit passes ``systemd-analyze verify`` and
runs the entry point the wheel installs, and docs/node-daemon.md shows the unit as it is."""

from __future__ import annotations

import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "node_daemon" / "dit4c-node.service"
COMMAND = "/opt/dit4c-node/bin/dit4c-node"
"""Where docs/node-daemon.md installs the node's virtualenv: not on this machine."""


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze (Debian's systemd) is not installed")
def test_the_systemd_unit_verifies() -> None:
    done = subprocess.run(["systemd-analyze", "verify", str(UNIT)], capture_output=True,
                          text=True, timeout=30, check=False)
    problems = [line for line in (done.stdout + done.stderr).splitlines() if line
                and f"Command {COMMAND} is not executable" not in line]
    assert not problems, "\n".join(problems)
    service = UNIT.read_text()
    assert f"ExecStart={COMMAND} run\n" in service
    # Pods outlive the daemon's restarts and upgrades.
    assert "KillMode=process\n" in service


def test_the_unit_runs_the_wheels_entry_point() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"dit4c-node": "node_daemon.__main__:main"}


def test_the_docs_show_the_unit_as_it_is() -> None:
    docs = (ROOT / "docs" / "node-daemon.md").read_text()
    body = "\n".join(line for line in UNIT.read_text().splitlines()
                     if line and not line.startswith("#"))
    assert body in docs
