"""The upload helper's push (``helpers.upload``) against the real image server, checked by
the real Docker engine pulling and running what it pushed.

The images are real ``docker save`` layouts: the tool image, and a container of it committed
with a file written in it (a saved instance). Pushing the latter with the former as its source
mounts the shared base layer instead of uploading it.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import docker
import docker.errors
import pytest

from helpers.upload.push import UploadError, UploadSettings, push
from helpers.upload.registry import Registry
from infra.local.stack import REPO_ROOT
from protocol.pod import ENV_UPLOAD
from protocol.registry import PULL, PUSH, repository_access
from tests.support.registry import RegistryServer, save_layout

pytestmark = [pytest.mark.docker]


class CountingRegistry(Registry):
    """The real client, counting what it uploads and mounts."""

    def __init__(self, base_url: str, token: str) -> None:
        super().__init__(base_url, token)
        self.uploads = 0
        self.mounts = 0

    def upload(self, repository, chunks, digest_of):
        self.uploads += 1
        super().upload(repository, chunks, digest_of)

    def mount(self, repository, digest, source):
        mounted = super().mount(repository, digest, source)
        self.mounts += int(mounted)
        return mounted


@pytest.fixture(scope="module")
def derived(docker_client: docker.DockerClient, tool_image: str,
            run_labels: dict[str, str]) -> Iterator[str]:
    """The tool image with ``/saved.txt`` written in a container and committed."""
    container = docker_client.containers.run(
        tool_image, ["sh", "-c", "echo written-before-saving > /saved.txt"], detach=True,
        labels=run_labels)
    container.wait(timeout=30)
    image = container.commit(repository="dit4c-test-upload", tag=uuid.uuid4().hex[:8],
                             changes=[f"LABEL {k}={v}" for k, v in run_labels.items()])
    container.remove()
    yield str(image.id)
    with contextlib.suppress(docker.errors.ImageNotFound):
        docker_client.images.remove(str(image.id), force=True)


@pytest.fixture(scope="module")
def layouts(tmp_path_factory: pytest.TempPathFactory, docker_client: docker.DockerClient,
            tool_image: str, derived: str) -> dict[str, Path]:
    """``docker save`` layouts of the tool image ("base") and of the saved one ("derived")."""
    root = tmp_path_factory.mktemp("layouts")
    return {"base": save_layout(docker_client, tool_image, root / "base"),
            "derived": save_layout(docker_client, derived, root / "derived")}


def settings(server: RegistryServer, repository: str, *, compression: str = "gzip",
             source: tuple[str, str] | None = None, token: str | None = None
             ) -> UploadSettings:
    access = [repository_access(repository, PUSH)]
    if source:
        access.append(repository_access(source[0], PULL))
    return UploadSettings(server.url, repository, "saved", token or server.token(access),
                          compression, source)


def pull_and_read(client: docker.DockerClient, server: RegistryServer, repository: str,
                  digest: str, labels: dict[str, str]) -> str:
    reference = f"{server.address}/{repository}@{digest}"
    token = server.token([repository_access(repository, PULL)])
    client.images.pull(f"{server.address}/{repository}", tag=digest,
                       auth_config={"registrytoken": token})
    try:
        out = client.containers.run(reference, ["cat", "/saved.txt"], remove=True,
                                    labels=labels)
    finally:
        client.images.remove(reference, force=True)
    return str(out.decode().strip())


def test_a_saved_image_is_pushed_on_top_of_its_source(
        docker_client: docker.DockerClient, image_server: RegistryServer,
        layouts: dict[str, Path], run_labels: dict[str, str]):
    base = f"catalog/tool{uuid.uuid4().hex[:6]}"
    seen: list[int] = []
    pushed = push(settings(image_server, base), layouts["base"], seen.append)
    assert seen[-1] == 100

    registry = CountingRegistry(image_server.url, "")
    saved = f"users/alice/{uuid.uuid4().hex[:12]}"
    layout = layouts["derived"]
    options = settings(image_server, saved, source=(base, pushed["digest"]))
    registry._token = options.token
    result = push(options, layout, lambda p: None, registry=registry)
    assert (registry.mounts, registry.uploads) == (1, 2)  # base mounted; top layer and config
    assert pull_and_read(docker_client, image_server, saved, result["digest"],
                         run_labels) == "written-before-saving"


def test_uncompressed_layers_keep_their_diff_ids_and_are_not_sent_twice(
        docker_client: docker.DockerClient, image_server: RegistryServer,
        layouts: dict[str, Path], run_labels: dict[str, str]):
    saved = f"users/alice/{uuid.uuid4().hex[:12]}"
    layout = layouts["derived"]
    first = push(settings(image_server, saved, compression="none"), layout, lambda p: None)
    reader = Registry(image_server.url, image_server.token([repository_access(saved, PULL)]))
    _, manifest = reader.manifest(saved, first["digest"])
    reader.close()
    config = json.loads((layout / json.loads((layout / "manifest.json").read_text())[0][
        "Config"]).read_text())
    assert [d["digest"] for d in manifest["layers"]] == config["rootfs"]["diff_ids"]
    registry = CountingRegistry(image_server.url, "")
    options = settings(image_server, saved, compression="none")
    registry._token = options.token
    again = push(options, layout, lambda p: None, registry=registry)
    assert again["digest"] == first["digest"] and registry.uploads == 0
    assert pull_and_read(docker_client, image_server, saved, first["digest"],
                         run_labels) == "written-before-saving"


def test_a_token_for_another_repository_is_refused(image_server: RegistryServer,
                                                   layouts: dict[str, Path]):
    layout = layouts["derived"]
    others = image_server.token([repository_access("users/bob/b1", PUSH)])
    with pytest.raises(UploadError, match="refused the push token"):
        push(settings(image_server, "users/alice/a1", token=others), layout, lambda p: None)


def run_helper(env: dict[str, str]) -> tuple[int, list[dict[str, object]]]:
    done = subprocess.run([sys.executable, "-m", "helpers.upload"], env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    return done.returncode, [json.loads(line) for line in done.stdout.splitlines()]


@pytest.mark.parametrize(("value", "message"), [
    ("", "must be a JSON object"),
    ('{"registry_url": "http://x", "repository": "Bad Name", "tag": "t", "token": "t"}',
     "is not a repository name"),
    ('{"registry_url": "http://x", "repository": "a/b", "tag": "t", "token": "t", '
     '"compression": "zstd"}', "compression must be one of"),
])
def test_bad_settings_stop_the_helper_with_status_2(value: str, message: str,
                                                     env_with_repo: Callable[[], dict[str, str]]):
    code, lines = run_helper({**env_with_repo(), ENV_UPLOAD: value})
    assert code == 2
    assert message in str(lines[-1]["error"])


@pytest.fixture
def env_with_repo() -> Callable[[], dict[str, str]]:
    return lambda: {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
