"""The shared test hooks themselves: a failing Docker test shows its containers' logs, and a
required engine that does not answer stops the run instead of skipping."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.docker

REPO = Path(__file__).resolve().parents[2]

FAILING_TEST = """
import pytest

pytestmark = pytest.mark.docker

def test_fails(docker_client, run_labels):
    container = docker_client.containers.run(
        "{image}", ["sh", "-c", "echo marker-from-the-container; sleep 30"],
        detach=True, labels=run_labels)
    for _ in range(100):
        if b"marker" in container.logs():
            break
        import time; time.sleep(0.05)
    assert False, "on purpose"
"""


@pytest.fixture
def inner(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, test_run_id: str):
    """An inner pytest session using the real tests/conftest.py, labelled with this run."""
    pytester.makeconftest((REPO / "tests" / "conftest.py").read_text())
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    monkeypatch.setenv("DIT4C_TEST_RUN", test_run_id)
    # The hooks need no plugin; loading schemathesis & co. would triple the inner start-up.
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    return pytester


def test_failing_docker_test_reports_container_logs(inner: pytest.Pytester, tool_image: str):
    inner.makepyfile(FAILING_TEST.format(image=tool_image))

    result = inner.runpytest_subprocess("-p", "no:cacheprovider")

    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        f"*container logs: * ({tool_image}, running)*",
        "marker-from-the-container",
    ])


def test_required_engine_that_does_not_answer_stops_the_run(
    inner: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    inner.makepyfile("def test_nothing():\n    pass\n")
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    monkeypatch.setenv("DIT4C_REQUIRE_DOCKER", "1")

    result = inner.runpytest_subprocess("-p", "no:cacheprovider")

    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stdout.fnmatch_lines(["*DIT4C_REQUIRE_DOCKER=1 but no Docker engine answers*"])
