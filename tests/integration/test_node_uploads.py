"""The node's upload path (``node_daemon.uploads``): a committed tool container is exported into
the upload helper's volume and pushed by the helper container over the pods network to the
image server (a second registry process on the pods gateway, as in the local stack); the
engine then pulls it back from the loopback address and the file written before saving is
there. Resuming, failing and cleaning up are checked on the same real engine."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator

import docker
import docker.errors
import pytest

from node_daemon.network import ensure_pods_network
from node_daemon.pods import PodRunner, PodSettings, container_name
from node_daemon.uploads import Uploader, UploadFailed, UploadJob
from protocol import pod
from protocol.registry import PULL, PUSH, repository_access
from tests.support.registry import RegistryServer

pytestmark = [pytest.mark.docker]


@pytest.fixture(scope="module")
def network(docker_client: docker.DockerClient, unique_name: Callable[[str], str],
            run_labels: dict[str, str]) -> tuple[str, str]:
    name = unique_name("uploads")
    return name, ensure_pods_network(docker_client, name, run_labels)


@pytest.fixture(scope="module")
def pods_registry(image_server: RegistryServer, network: tuple[str, str]
                  ) -> Iterator[RegistryServer]:
    server = image_server.beside(network[1]).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def uploader(docker_client: docker.DockerClient, network: tuple[str, str], helpers_image: str,
             run_labels: dict[str, str]) -> Iterator[Uploader]:
    runner = PodRunner(docker_client, PodSettings(node_id=f"test{uuid.uuid4().hex[:8]}",
                                                  network=network[0],
                                                  helpers_image=helpers_image,
                                                  labels=run_labels))
    yield Uploader(runner)
    runner.close()


@pytest.fixture(scope="module")
def saved(docker_client: docker.DockerClient, tool_image: str, run_labels: dict[str, str]
          ) -> Iterator[str]:
    container = docker_client.containers.run(
        tool_image, ["sh", "-c", "echo written-before-saving > /saved.txt"], detach=True,
        labels=run_labels)
    container.wait(timeout=30)
    image = container.commit(repository="dit4c-test-uploads", tag=uuid.uuid4().hex[:8],
                             changes=[f"LABEL {k}={v}" for k, v in run_labels.items()])
    container.remove()
    yield str(image.id)
    with contextlib.suppress(docker.errors.ImageNotFound):
        docker_client.images.remove(str(image.id), force=True)


def job(pods: RegistryServer, repository: str, token_for: str | None = None) -> UploadJob:
    token = pods.token([repository_access(token_for or repository, PUSH)])
    return UploadJob(f"http://host.docker.internal:{pods.address.rsplit(':', 1)[1]}",
                     repository, "saved", token)


def test_the_helper_pushes_what_the_node_committed(
        uploader: Uploader, saved: str, pods_registry: RegistryServer,
        docker_client: docker.DockerClient, run_labels: dict[str, str]):
    iid = uuid.uuid4().hex[:12]
    repository = f"users/alice/{iid}"
    seen: list[int] = []
    the_job = job(pods_registry, repository)
    try:
        pushed = uploader.push(iid, saved, the_job, seen.append)
        assert seen[-1] == 100 and seen == sorted(seen), seen
        # only the helper holds the token
        env = docker_client.api.inspect_container(container_name(iid, pod.ROLE_UPLOAD))[
            "Config"]["Env"]
        assert any(the_job.token in e for e in env)
        # resuming after it finished reads the same result, without pushing again
        assert uploader.push(iid, saved, the_job, lambda p: None) == pushed
    finally:
        uploader.remove(iid)
    assert not docker_client.containers.list(all=True, filters={
        "name": container_name(iid, pod.ROLE_UPLOAD)})
    with pytest.raises(docker.errors.NotFound):
        docker_client.volumes.get(container_name(iid, pod.ROLE_UPLOAD))

    # pulled from the loopback listener, as the node's engine does
    reference = f"127.0.0.1:{pods_registry.address.rsplit(':', 1)[1]}/{repository}"
    docker_client.images.pull(reference, tag=pushed.digest, auth_config={
        "registrytoken": pods_registry.token([repository_access(repository, PULL)])})
    try:
        out = docker_client.containers.run(f"{reference}@{pushed.digest}", ["cat", "/saved.txt"],
                                           remove=True, labels=run_labels)
    finally:
        # the same image as ``saved``: drop only this name of it
        docker_client.images.remove(f"{reference}@{pushed.digest}")
    assert out.decode().strip() == "written-before-saving"


def test_a_refused_push_says_why_and_keeps_nothing_running(
        uploader: Uploader, saved: str, pods_registry: RegistryServer,
        docker_client: docker.DockerClient):
    iid = uuid.uuid4().hex[:12]
    try:
        with pytest.raises(UploadFailed, match="refused the push token"):
            uploader.push(iid, saved, job(pods_registry, f"users/alice/{iid}",
                                          token_for="users/bob/b1"), lambda p: None)
        state = docker_client.api.inspect_container(container_name(iid, pod.ROLE_UPLOAD))
        assert state["State"]["Status"] == "exited"
    finally:
        uploader.remove(iid)
