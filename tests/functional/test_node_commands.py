"""``python -m node_daemon join|run`` as a user runs them, against the real control plane on
loopback (its API over moto's server mode: tests.support.control_plane)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from protocol.tokens import SigningKey, thumbprint
from tests.support.control_plane import ControlPlane, control_plane


@pytest.fixture(scope="module")
def portal() -> Iterator[ControlPlane]:
    with control_plane() as plane:
        yield plane


@pytest.fixture(scope="module")
def joined(portal: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("joined") / "node"
    assert node("join", "--portal", portal.url, "--token", portal.new_join_token(),
                "--data-dir", str(data)).returncode == 0
    return data


def node(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "node_daemon", *args], capture_output=True,
                          text=True, timeout=60, check=False, env=env)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("command", [[], ["join"], ["run"]])
def test_help(command: list[str]):
    done = node(*command, "--help")
    assert done.returncode == 0, done.stderr
    assert "usage: python -m node_daemon" in done.stdout
    if command == ["join"]:
        assert "--portal" in done.stdout and "--token" in done.stdout
    if command == ["run"]:
        assert "--data-dir" in done.stdout and "SIGTERM" in done.stdout


def test_join_enrols_and_saves_owner_only_files(portal: ControlPlane, tmp_path: Path):
    data = tmp_path / "node"
    done = node("join", "--portal", portal.url, "--token", portal.new_join_token(),
                "--data-dir", str(data), "--name", "lab-1", "--cpu", "2", "--memory-mb", "1024")
    assert done.returncode == 0, done.stderr
    identity = json.loads((data / "node.json").read_text())
    assert done.stdout.strip().endswith(f"saved in {data}")
    registered = portal.node(identity["node_id"])
    assert (registered["name"], registered["cpu_milli_total"],
            registered["memory_mb_total"]) == ("lab-1", 2000, 1024)
    assert identity["queue_url"] == registered["queue_url"]
    assert identity["events_queue_url"] == portal.events_queue_url
    # The private key stays here, readable by the owner only; the portal got its public half.
    key = SigningKey.from_pem((data / "node-key.pem").read_bytes())
    assert thumbprint(registered["public_jwk"]) == key.kid
    assert mode(data) == 0o700
    assert mode(data / "node.json") == 0o600
    assert mode(data / "node-key.pem") == 0o600
    assert sorted(p.name for p in data.iterdir()) == ["node-key.pem", "node.json"]


def test_join_with_a_used_token_fails_and_writes_nothing(portal: ControlPlane, tmp_path: Path):
    token = portal.new_join_token()
    assert node("join", "--portal", portal.url, "--token", token,
                "--data-dir", str(tmp_path / "first")).returncode == 0
    done = node("join", "--portal", portal.url, "--token", token,
                "--data-dir", str(tmp_path / "second"))
    assert done.returncode == 1
    assert "refused" in done.stderr and "401" in done.stderr
    assert "join token is unknown or already used" in done.stderr
    assert not (tmp_path / "second" / "node.json").exists()


def test_join_twice_keeps_the_first_identity(portal: ControlPlane, tmp_path: Path):
    data = tmp_path / "node"
    assert node("join", "--portal", portal.url, "--token", portal.new_join_token(),
                "--data-dir", str(data)).returncode == 0
    before = (data / "node.json").read_text(), (data / "node-key.pem").read_text()
    done = node("join", "--portal", portal.url, "--token", portal.new_join_token(),
                "--data-dir", str(data))
    assert done.returncode == 2
    assert "already holds a node identity" in done.stderr
    assert ((data / "node.json").read_text(), (data / "node-key.pem").read_text()) == before


def test_join_to_an_unreachable_portal_says_so(tmp_path: Path):
    done = node("join", "--portal", "http://127.0.0.1:9", "--token", "t",
                "--data-dir", str(tmp_path / "node"))
    assert done.returncode == 1
    assert "cannot reach http://127.0.0.1:9/api/nodes/enroll" in done.stderr


def test_run_before_join_says_what_to_do(tmp_path: Path):
    done = node("run", "--data-dir", str(tmp_path / "nothing"))
    assert done.returncode == 2
    assert "run `python -m node_daemon join" in done.stderr


@pytest.mark.parametrize(("variable", "value", "message"), [
    ("DIT4C_NODE_LABELS", "novalue", "is not key=value"),
    ("DIT4C_NODE_HELPER_COMMANDS", '{"tool": ["sh"]}', "must map helper roles"),
    ("DIT4C_NODE_HELPER_COMMANDS", "[", "is not JSON"),
    ("DIT4C_NODE_POLL_WAIT_SECONDS", "30", "at most 20"),
    ("DIT4C_NODE_HEARTBEAT_SECONDS", "often", "must be a number"),
    ("DIT4C_NODE_METRICS_LISTEN", "9464", "must be host:port"),
])
def test_bad_settings_fail_fast_naming_them(joined: Path, variable: str, value: str,
                                            message: str):
    done = node("run", "--data-dir", str(joined), env={**os.environ, variable: value})
    assert done.returncode == 2
    assert message in done.stderr
    assert variable in done.stderr or "DIT4C_NODE_LABELS" in done.stderr

