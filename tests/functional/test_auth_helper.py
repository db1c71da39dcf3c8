"""The auth helper as a real process (``python -m helpers.auth``, this virtualenv's aiohttp) in
front of the echo tool, against the real OAuth2 server on a loopback socket.

Every scenario of ``tests/support/auth_scenarios.py`` runs here; the integration tier runs the
same ones against the helper in its container (Debian's aiohttp 3.8).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from moto import mock_aws

from protocol import pod
from tests.support.auth_harness import PortalHarness
from tests.support.auth_scenarios import (
    ECHO_TOOL,
    PORTAL,
    SCENARIOS,
    TOKEN_LIFETIME,
    Scenario,
    Stack,
    helper_env,
    wait_until_answering,
)

ROOT = Path(__file__).resolve().parents[2]


class Process:
    """A child process whose output goes to a file (no pipe to fill up), stopped at the end."""

    def __init__(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        self.log = tempfile.NamedTemporaryFile(prefix="dit4c-auth-test-", suffix=".log")  # noqa: SIM115
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT,
                                     env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def wait_for(self, pattern: str, within: float = 30) -> re.Match[str]:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if match := re.search(pattern, self.output()):
                return match
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(
            f"no {pattern!r} in the output of {self.proc.args!r}:\n{self.output()}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with mock_aws():
        portal = PortalHarness(issuer=PORTAL, access_lifetime=TOKEN_LIFETIME)
        with portal.serve("127.0.0.1") as portal_url:
            processes: list[Process] = []
            hosts = {"portal.dit4c.test": ("127.0.0.1", int(portal_url.rsplit(":", 1)[1]))}
            try:
                for instance in ("a", "b", "w"):
                    tool = Process([sys.executable, "-c", ECHO_TOOL, "127.0.0.1", "0"])
                    processes.append(tool)
                    tool_port = tool.wait_for(r"listening (\d+)").group(1)
                    env = helper_env(portal, instance, listen="127.0.0.1:0",
                                     upstream=f"http://127.0.0.1:{tool_port}",
                                     token_base=portal_url)
                    helper = Process([sys.executable, "-m", "helpers.auth"], env)
                    processes.append(helper)
                    port = helper.wait_for(r"listening on 127\.0\.0\.1:(\d+)").group(1)
                    hosts[f"{instance}.dit4c.test"] = ("127.0.0.1", int(port))
                yield Stack(portal, hosts, dict.fromkeys(("a", "b", "w"), "dit4c echo tool"))
            finally:
                for process in processes:
                    process.stop()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.__name__)
async def test_scenario(stack: Stack, scenario: Scenario) -> None:
    stack.reset()
    await wait_until_answering(stack)
    try:
        await scenario(stack)
    finally:
        await stack.close_browsers()


@pytest.mark.parametrize(("missing_or_bad", "value"), [
    (pod.ENV_OAUTH_CLIENT_SECRET, ""),
    (pod.ENV_AUTH_LISTEN, "7781"),
    (pod.ENV_PUBLIC_URL, "http://a.test/some/path"),
    (pod.ENV_OAUTH_TOKEN_URL, "ftp://portal/token"),
])
def test_bad_settings_stop_the_helper_naming_the_setting(missing_or_bad, value):
    env = {
        pod.ENV_AUTH_LISTEN: "127.0.0.1:0", pod.ENV_AUTH_UPSTREAM: "http://127.0.0.1:1",
        pod.ENV_INSTANCE_ID: "a", pod.ENV_PUBLIC_URL: "http://a.test",
        pod.ENV_OAUTH_CLIENT_ID: "c", pod.ENV_OAUTH_CLIENT_SECRET: "s",
        pod.ENV_OAUTH_AUTHORIZE_URL: "http://p/oauth/authorize",
        pod.ENV_OAUTH_TOKEN_URL: "http://p/oauth/token",
        pod.ENV_OAUTH_JWKS_URL: "http://p/.well-known/jwks.json",
        missing_or_bad: value,
    }
    result = subprocess.run([sys.executable, "-m", "helpers.auth"], cwd=ROOT, timeout=30,
                            env={**os.environ, "PYTHONPATH": str(ROOT), **env},
                            capture_output=True, text=True, check=False)
    assert result.returncode == 2
    assert missing_or_bad in result.stderr
