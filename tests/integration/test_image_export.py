"""The image exporter (``python -m image_export``) as a process: an export link streams a
``docker save`` tar that the real engine loads and runs; expired, forged and foreign links are
refused by the real image server behind it."""

from __future__ import annotations

import contextlib
import http.client
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import docker
import docker.errors
import pytest

from infra.local.stack import REPO_ROOT
from protocol.registry import EXPORT_CLAIM, PULL, repository_access
from tests.ports import free_port
from tests.support.registry import RegistryServer, push_image

pytestmark = [pytest.mark.docker]


@pytest.fixture(scope="module")
def exporter(image_server: RegistryServer, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[int]:
    port = free_port()
    log = tmp_path_factory.mktemp("exporter") / "exporter.log"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT),
           "DIT4C_EXPORT_LISTEN": f"127.0.0.1:{port}",
           "DIT4C_EXPORT_REGISTRY_URL": image_server.url}
    with open(log, "ab") as output:
        process = subprocess.Popen([sys.executable, "-m", "image_export"], env=env,
                                   stdout=output, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while get(port, "/health")[0] != 200:
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        yield port
    finally:
        process.terminate()
        process.wait(10)


@pytest.fixture(scope="module")
def pushed(image_server: RegistryServer, docker_client: docker.DockerClient, tool_image: str,
           run_labels: dict[str, str], tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[tuple[str, str]]:
    """A saved image (the tool with /saved.txt) on the image server: (repository, digest)."""
    container = docker_client.containers.run(
        tool_image, ["sh", "-c", "echo written-before-saving > /saved.txt"], detach=True,
        labels=run_labels)
    container.wait(timeout=30)
    image = container.commit(repository="dit4c-test-export", tag=uuid.uuid4().hex[:8],
                             changes=[f"LABEL {k}={v}" for k, v in run_labels.items()])
    container.remove()
    repository = f"users/alice/{uuid.uuid4().hex[:12]}"
    try:
        digest = push_image(image_server, docker_client, str(image.id), repository,
                            tmp_path_factory.mktemp("export") / "layout")
    finally:
        docker_client.images.remove(str(image.id), force=True)
    yield repository, digest


def get(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    except OSError:
        return 0, {}, b""
    finally:
        connection.close()


def link(server: RegistryServer, repository: str, digest: str, *, access_to: str | None = None,
         now: float | None = None) -> str:
    return "/export/" + server.token(
        [repository_access(access_to or repository, PULL)], now=now,
        extra={EXPORT_CLAIM: {"repository": repository, "digest": digest, "name": "my-work"}})


def test_an_export_loads_with_docker_load_and_runs(exporter: int, pushed: tuple[str, str],
                                                   image_server: RegistryServer,
                                                   docker_client: docker.DockerClient,
                                                   run_labels: dict[str, str]):
    status, headers, body = get(exporter, link(image_server, *pushed))
    assert status == 200, body[:300]
    assert headers["Content-Type"] == "application/x-tar"
    assert headers["Content-Disposition"] == 'attachment; filename="my-work.tar"'
    assert int(headers["Content-Length"]) == len(body)
    loaded = docker_client.images.load(body)
    try:
        assert [t for i in loaded for t in i.tags] == ["dit4c/my-work:saved"]
        out = docker_client.containers.run("dit4c/my-work:saved", ["cat", "/saved.txt"],
                                           remove=True, labels=run_labels)
        assert out.decode().strip() == "written-before-saving"
    finally:
        with contextlib.suppress(docker.errors.ImageNotFound):
            docker_client.images.remove("dit4c/my-work:saved", force=True)


def test_links_that_are_expired_forged_or_for_another_image_are_refused(
        exporter: int, pushed: tuple[str, str], image_server: RegistryServer):
    repository, digest = pushed
    expired = link(image_server, repository, digest, now=time.time() - 7200)
    assert get(exporter, expired)[0] == 403
    # a valid token for another repository, relabelled as this image's link
    foreign = link(image_server, repository, digest, access_to="users/mallory/m1")
    assert get(exporter, foreign)[0] == 403
    head, body, signature = link(image_server, repository, digest).split("/")[-1].split(".")
    assert get(exporter, f"/export/{head}.{body}.{signature[:-4]}AAAA")[0] == 403
    assert get(exporter, "/export/not-a-token")[0] == 400
    gone = link(image_server, repository, "sha256:" + "0" * 64)
    assert get(exporter, gone)[0] == 404
