"""``dit4c-node join|run|status`` (``python -m node_daemon``) as a user runs them, against the
real control plane on loopback (its API over moto's server mode: tests.support.control_plane)
and this machine's Docker engine (``join`` checks that one answers before spending a token).

Bad input and failure: a used, expired or revoked token, a wrong portal URL, a portal that is
down, no Docker engine, a pinned helpers digest the portal does not publish, a helpers image
that cannot be pulled after enrolment: each is one line naming what to do, a non-zero exit, no
node left in the portal and no identity on disk."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from control_plane import services
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


@pytest.mark.parametrize("command", [[], ["join"], ["run"], ["status"]])
def test_help(command: list[str]):
    done = node(*command, "--help")
    assert done.returncode == 0, done.stderr
    assert "usage: dit4c-node" in done.stdout
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
    assert done.stderr.startswith("join: the portal refused the join token: ")
    assert "join token is unknown, used or revoked; ask an admin for a new join command" \
        in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
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


def nodes_in(portal: ControlPlane) -> set[str]:
    return {n.node_id for n in portal.services.nodes.in_cluster(portal.cluster_id)}


def refused(portal: ControlPlane, tmp_path: Path, *args: str, token: str | None = None,
            env: dict[str, str] | None = None) -> str:
    """Run a join that must fail: its one line, after checking it left nothing behind."""
    before = nodes_in(portal)
    data = tmp_path / "node"
    done = node("join", "--portal", portal.url, "--token", token or portal.new_join_token(),
                "--data-dir", str(data), *args, env=env)
    assert done.returncode == 1, done
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert nodes_in(portal) == before
    assert not (data / "node.json").exists() and not (data / "node-key.pem").exists()
    return done.stderr


def test_join_to_an_unreachable_portal_says_so(tmp_path: Path):
    done = node("join", "--portal", "http://127.0.0.1:9", "--token", "t",
                "--data-dir", str(tmp_path / "node"))
    assert done.returncode == 1
    assert done.stderr.startswith("join: cannot reach the portal at http://127.0.0.1:9: check "
                                  "the URL (copy the join command again")


def test_join_to_a_url_that_is_no_portal_says_so(portal: ControlPlane, tmp_path: Path):
    done = node("join", "--portal", portal.url + "/not-here", "--token", "t",
                "--data-dir", str(tmp_path / "node"))
    assert done.returncode == 1
    assert f"{portal.url}/not-here is not a dit4c portal" in done.stderr


def test_join_with_an_expired_or_revoked_token_fails(portal: ControlPlane, tmp_path: Path):
    nodes = portal.services.nodes
    expired = portal.new_join_token()
    nodes.tokens.update({"token_key": "join:" + hashlib.sha256(expired.encode()).hexdigest()},
                        "SET expires_at = :e", vals={":e": int(time.time()) - 1})
    assert "join token expired; ask an admin" in refused(portal, tmp_path, token=expired)
    revoked = nodes.create_join_token(portal.cluster_id)
    nodes.revoke_join_token(portal.cluster_id, revoked.id)
    assert "join token is unknown, used or revoked" in refused(portal, tmp_path,
                                                               token=revoked.token)


def test_join_without_a_docker_engine_keeps_the_token(portal: ControlPlane, tmp_path: Path):
    token = portal.new_join_token()
    message = refused(portal, tmp_path, token=token,
                      env={**os.environ, "DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock"})
    assert f"no Docker engine answers at unix://{tmp_path}/no-docker.sock" in message
    assert "start Docker" in message
    listed = portal.services.nodes.join_tokens(portal.cluster_id)
    assert hashlib.sha256(token.encode()).hexdigest() in {g.token_id for g in listed}


def test_join_pinning_another_helpers_digest_keeps_the_token(portal: ControlPlane,
                                                             tmp_path: Path):
    message = refused(portal, tmp_path, "--helpers-digest", "sha256:" + "0" * 64)
    assert "pins the helpers image sha256:000" in message and "publishes none" in message
    assert "copy the join command again" in message


def test_a_helpers_image_that_cannot_be_pulled_withdraws_the_node(portal: ControlPlane,
                                                                  tmp_path: Path):
    digest = "sha256:" + "ab" * 32
    try:
        with control_plane(settings={
                "DIT4C_HELPERS_IMAGE": f"127.0.0.1:9/dit4c/helpers:0.1.0@{digest}"}) as other:
            token = other.new_join_token()
            assert other.services.nodes.join_command(token).endswith(
                f"--token {token} --helpers-digest {digest} && dit4c-node run")
            message = refused(other, tmp_path, "--helpers-digest", digest, token=token)
            assert "the node was withdrawn from the portal" in message
            assert nodes_in(other) == set()
    finally:
        services.use(portal.services)  # one control plane per process: the module's again


def test_status_says_what_answers(joined: Path, portal: ControlPlane):
    done = node("status", "--data-dir", str(joined))
    assert done.returncode == 1  # no daemon runs
    lines = dict(line.split(":", 1) for line in done.stdout.splitlines())
    assert set(lines) == {"node", "portal", "daemon", "docker", "helpers", "pods"}
    assert f"{portal.url} answers" in lines["portal"]
    assert "not running" in lines["daemon"]
    assert "0 instance(s)" in lines["pods"]
    missing = node("status", "--data-dir", str(joined.parent / "nothing"))
    assert missing.returncode == 1 and "not joined" in missing.stdout


def test_run_before_join_says_what_to_do(tmp_path: Path):
    done = node("run", "--data-dir", str(tmp_path / "nothing"))
    assert done.returncode == 2
    assert "run `dit4c-node join" in done.stderr


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

