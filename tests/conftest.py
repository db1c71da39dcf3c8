"""Fixtures and hooks shared by every tier.

Docker, for the tests that use it (mark them ``@pytest.mark.docker``):

- ``docker_client`` (session): a docker SDK client for the engine at ``DOCKER_HOST`` or the
  default socket. When no engine answers the test is skipped with the reason — unless
  ``DIT4C_REQUIRE_DOCKER=1`` (``make test`` and CI set it), where that is an error: a missing
  engine must never turn into a green run that tested nothing.
- ``test_run_id`` / ``run_labels`` (session): every container, network, volume or image a test
  creates carries ``run_labels`` (``dit4c.test-run=<id>``; ``DIT4C_TEST_RUN`` sets the id, else a
  fresh one per session). At the end of the session everything with this run's label is removed
  (``scripts.cleanup``), and ``make test`` does it again after pytest exits, in case pytest was
  killed.
- ``unique_name``: ``unique_name("pods")`` -> ``dit4c-test-<run id>-pods-<n>``, for names that
  must not collide with other runs on a shared engine.
- When a Docker test fails, the logs of the containers created while it ran are added to its
  report (the ``container logs`` sections under the failure).
"""

from __future__ import annotations

import itertools
import os
import socket
import uuid
from collections.abc import Callable, Generator, Iterator
from typing import Any

import docker
import docker.errors
import pytest

from scripts.cleanup import TEST_RUN_LABEL, remove_labelled

# pytester: tests/integration/test_conftest_hooks.py runs these hooks in an inner session.
pytest_plugins = ["pytester"]

RUN_ID = os.environ.get("DIT4C_TEST_RUN") or uuid.uuid4().hex[:12]
REQUIRE_DOCKER = os.environ.get("DIT4C_REQUIRE_DOCKER") == "1"
LOG_TAIL_LINES = 200

_containers_before = pytest.StashKey[set[str]]()


def pytest_sessionstart(session: pytest.Session) -> None:
    # Checked once up front, so that no fixture of any part (each may make its own client) can
    # turn a missing engine into skipped tests under `make test`.
    if REQUIRE_DOCKER and _client_for_hooks() is None:
        pytest.exit(
            "DIT4C_REQUIRE_DOCKER=1 but no Docker engine answers; run `make deps` (Debian, root) "
            "or start Docker",
            returncode=pytest.ExitCode.USAGE_ERROR,
        )


def pytest_sessionfinish(session: pytest.Session) -> None:
    global _hook_client  # noqa: PLW0603 - closing the one lazily made client
    if _hook_client is not None:
        _hook_client.close()
        _hook_client = None


def pytest_report_header(config: pytest.Config) -> str:
    engine = "required (DIT4C_REQUIRE_DOCKER=1)" if REQUIRE_DOCKER else "optional (skip if absent)"
    return f"dit4c: test run {RUN_ID} (label {TEST_RUN_LABEL}); Docker engine {engine}"


@pytest.fixture(scope="session")
def test_run_id() -> str:
    return RUN_ID


@pytest.fixture(scope="session")
def run_labels(test_run_id: str) -> dict[str, str]:
    """Labels for every Docker object a test creates; add your own with ``{**run_labels, ...}``."""
    return {TEST_RUN_LABEL: test_run_id}


@pytest.fixture(scope="session")
def unique_name(test_run_id: str) -> Callable[[str], str]:
    counter = itertools.count(1)

    def make(prefix: str) -> str:
        return f"dit4c-test-{test_run_id}-{prefix}-{next(counter)}"

    return make


def _connect() -> docker.DockerClient:
    host = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    if host.startswith("unix://"):
        # Probe the socket first: docker-py leaks the socket of a failed unix connect, and
        # warnings (ResourceWarning included) are errors here.
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(5)
            try:
                probe.connect(host.removeprefix("unix://"))
            except OSError as exc:
                raise docker.errors.DockerException(f"cannot connect to {host}: {exc}") from exc
    client = docker.from_env(timeout=120)
    try:
        client.ping()
    except docker.errors.DockerException:
        client.close()  # else its pooled socket is reported unclosed, and warnings are errors
        raise
    return client


@pytest.fixture(scope="session")
def docker_client(test_run_id: str) -> Iterator[docker.DockerClient]:
    try:
        client = _connect()
    except docker.errors.DockerException as exc:
        reason = (
            f"no Docker engine answers ({exc}). On Debian as root `make deps` installs and "
            "starts one; elsewhere install Docker Engine and start it."
        )
        if REQUIRE_DOCKER:
            pytest.fail(f"DIT4C_REQUIRE_DOCKER=1 but {reason}", pytrace=False)
        pytest.skip(reason)
    yield client
    remove_labelled(client, f"{TEST_RUN_LABEL}={test_run_id}")
    client.close()


# -- container logs on failure --------------------------------------------------------------


def _uses_docker(item: pytest.Item) -> bool:
    fixtures: list[str] = getattr(item, "fixturenames", [])
    return item.get_closest_marker("docker") is not None or "docker_client" in fixtures


_hook_client: docker.DockerClient | None = None


def _client_for_hooks() -> docker.DockerClient | None:
    """A client of the hooks' own (fixtures may not exist yet); None when no engine answers."""
    global _hook_client  # noqa: PLW0603 - one lazily made client per session
    if _hook_client is None:
        try:
            _hook_client = _connect()
        except docker.errors.DockerException:
            return None
    return _hook_client


def _container_ids(client: docker.DockerClient) -> set[str]:
    return {c["Id"] for c in client.api.containers(all=True, quiet=True)}


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    if _uses_docker(item) and (client := _client_for_hooks()) is not None:
        item.stash[_containers_before] = _container_ids(client)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    # The call report is made before fixture teardown, so the containers still exist here.
    if report.failed and report.when in ("setup", "call") and _containers_before in item.stash:
        client = _client_for_hooks()
        if client is not None:
            for title, text in _new_container_logs(client, item.stash[_containers_before]):
                report.sections.append((title, text))
    return report


def _new_container_logs(client: docker.DockerClient, before: set[str]) -> list[tuple[str, str]]:
    sections = []
    for cid in sorted(_container_ids(client) - before):
        try:
            container = client.containers.get(cid)
            labels: dict[str, Any] = container.labels
            if labels.get(TEST_RUN_LABEL, RUN_ID) != RUN_ID:
                continue  # another run's container on a shared engine
            logs = container.logs(tail=LOG_TAIL_LINES).decode(errors="replace")
        except docker.errors.DockerException as exc:
            logs = f"(could not read logs: {exc})"
            container = None
        name = container.name if container is not None else cid[:12]
        image = container.attrs["Config"]["Image"] if container is not None else "?"
        status = container.status if container is not None else "?"
        sections.append(
            (f"container logs: {name} ({image}, {status})", logs or "(no output)")
        )
    return sections
