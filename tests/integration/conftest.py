"""Fixtures for the integration tier: the local images, and throwaway networks and containers.

- ``tool_image`` / ``helpers_image`` / ``jupyterlab_image`` (session): the image names, made
  sure to exist with the current recipe (``scripts.build_images``; reused in milliseconds after
  ``make images``).
- ``docker_network``: a fresh bridge network for this test, labelled, removed afterwards. The
  host reaches containers on it by their IP address on that network (``container_ip``): no
  published host ports, so parallel runs never fight over a port.
- ``run_container``: ``run_container(image, **kwargs)`` starts a labelled, detached container
  (on ``docker_network`` unless ``network=`` says otherwise) and removes it after the test.
- ``container_ip(container, network)``: its address on that network.
- ``node_settings`` (module): a test node daemon's ``DIT4C_NODE_*`` settings, with a pods
  network of its own (``tests.support.node.node_env``).
- ``registry_keys``, ``image_server`` (session): the portal's key store over moto's SSM, and
  Debian's ``docker-registry`` trusting it (``tests.support.registry.RegistryServer``; its
  ``token(access)`` signs tokens as the portal does).
- ``second_engine`` (session): a second ``dockerd`` (``tests.support.engines.SecondEngine``:
  own data root, exec root, socket, pidfile and bridge) with the tool and helpers images
  loaded from the first engine (the helpers under their pinned tag, and as
  ``dit4c/helpers:dev``: nobody else moves tags on this engine); stopped, with everything on
  it, at the end of the session.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import docker
import docker.errors
import pytest
from docker.models.containers import Container
from docker.models.networks import Network

from control_plane.keys import KeyStore
from scripts import images
from scripts.build_images import ImageBuilder, pinned
from tests.support.engines import SecondEngine
from tests.support.node import node_env
from tests.support.registry import RegistryServer, key_store

RunContainer = Callable[..., Container]


@pytest.fixture(scope="session")
def image_builder(docker_client: docker.DockerClient) -> ImageBuilder:
    return ImageBuilder(docker_client)


@pytest.fixture(scope="session")
def tool_image(image_builder: ImageBuilder) -> str:
    image_builder.ensure([images.TEST_TOOL])
    return images.TEST_TOOL


@pytest.fixture(scope="session")
def node_image(image_builder: ImageBuilder) -> str:
    """The node daemon's image (``make dist``'s wheel on the helper base)."""
    image_builder.ensure([images.HELPER_BASE, images.NODE])
    return images.NODE


@pytest.fixture(scope="session")
def helpers_image(image_builder: ImageBuilder) -> str:
    """This checkout's helpers image by its recipe tag (``dit4c/helpers:r-<recipe>``): on a
    shared engine another checkout may move ``dit4c/helpers:dev`` to its own code mid-run."""
    image_builder.ensure([images.HELPER_BASE])
    return pinned(images.HELPERS, image_builder.helpers().recipe)


@pytest.fixture(scope="session")
def jupyterlab_image(image_builder: ImageBuilder) -> str:
    image_builder.ensure([images.HELPER_BASE, images.JUPYTERLAB])
    return images.JUPYTERLAB


@pytest.fixture
def docker_network(
    docker_client: docker.DockerClient,
    run_labels: dict[str, str],
    unique_name: Callable[[str], str],
) -> Iterator[Network]:
    network = docker_client.networks.create(
        unique_name("net"), driver="bridge", labels=run_labels, check_duplicate=True
    )
    yield network
    try:
        network.reload()
        for container in network.containers:
            network.disconnect(container, force=True)
        network.remove()
    except docker.errors.NotFound:
        pass


@pytest.fixture
def run_container(
    docker_client: docker.DockerClient,
    docker_network: Network,
    run_labels: dict[str, str],
    unique_name: Callable[[str], str],
) -> Iterator[RunContainer]:
    made: list[Container] = []

    def run(image: str, **kwargs: Any) -> Container:
        kwargs.setdefault("network", docker_network.name)
        kwargs.setdefault("name", unique_name("c"))
        kwargs["labels"] = {**run_labels, **kwargs.get("labels", {})}
        container = docker_client.containers.run(image, detach=True, **kwargs)
        made.append(container)
        return container

    yield run
    for container in made:
        with contextlib.suppress(docker.errors.NotFound):
            container.remove(force=True, v=True)


def _container_ip(container: Container, network: Network) -> str:
    """The container's IPv4 address on ``network`` (reloads the container's state)."""
    container.reload()
    address: str = container.attrs["NetworkSettings"]["Networks"][network.name]["IPAddress"]
    assert address, f"{container.name} has no address on {network.name}"
    return address


@pytest.fixture
def container_ip() -> Callable[[Container, Network], str]:
    return _container_ip


@pytest.fixture(scope="module")
def node_settings(docker_client: docker.DockerClient, run_labels: dict[str, str],
                  unique_name: Callable[[str], str], helpers_image: str) -> dict[str, str]:
    # The pods network is removed with everything else labelled by this run.
    return node_env(docker_client, pods_network=unique_name("pods"), labels=run_labels,
                    helpers_image=helpers_image, DIT4C_NODE_HELPERS_IMAGE=helpers_image)


@pytest.fixture(scope="session")
def registry_keys() -> Iterator[KeyStore]:
    with key_store() as keys:
        yield keys


@pytest.fixture(scope="session")
def image_server(tmp_path_factory: pytest.TempPathFactory,
                 registry_keys: KeyStore) -> Iterator[RegistryServer]:
    server = RegistryServer(tmp_path_factory.mktemp("image-server"), registry_keys).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def second_engine(docker_client: docker.DockerClient, test_run_id: str, run_labels: dict[str, str],
                  tool_image: str, helpers_image: str) -> Iterator[SecondEngine]:
    """A second node's engine (see tests/support/engines.py), started once per session."""
    name = "e" + "".join(c for c in test_run_id.lower() if c.isalnum() and c.isascii())[:9]
    engine = SecondEngine(name, labels=run_labels).start()
    try:
        engine.load_from(docker_client, [tool_image, helpers_image])
        engine.client.images.get(helpers_image).tag(images.HELPERS)
        yield engine
    finally:
        engine.stop()
