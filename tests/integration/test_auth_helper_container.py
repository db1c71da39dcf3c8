"""The auth helper in its real container (``dit4c/helpers:dev``: Debian bookworm's aiohttp 3.8,
python3-jwt, python3-cryptography), in front of real tools sharing its network namespace, as
the node daemon composes a pod; the portal's real OAuth2 server listens on the network's gateway.

Pods: ``a`` and ``b`` serve the busybox test tool, ``w`` the echo tool (HTTP + WebSocket, run
with the image's own python3). The browser is a cookie-jar client that resolves
``*.dit4c.test`` to the helpers' container addresses. Every scenario of
``tests/auth_scenarios.py`` runs, attacks included.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator

import docker
import docker.errors
import pytest
from docker.models.containers import Container
from moto import mock_aws

from protocol import pod
from scripts import images
from scripts.build_images import ImageBuilder
from tests.auth_harness import PortalHarness
from tests.auth_scenarios import (
    ECHO_TOOL,
    PORTAL,
    SCENARIOS,
    TOKEN_LIFETIME,
    Scenario,
    Stack,
    helper_env,
    wait_until_answering,
)

pytestmark = pytest.mark.docker

ECHO_PORT = 9000


def _helpers_image_id(docker_client: docker.DockerClient, builder: ImageBuilder) -> str:
    """The id of a helpers image built from this checkout (another checkout may retag the name
    while tests run on a shared engine: the id cannot change under us)."""
    builder.ensure([images.HELPER_BASE])
    for _ in range(3):
        recipe = builder.helpers().recipe
        image = docker_client.images.get(images.HELPERS)
        if (image.labels or {}).get(images.RECIPE_LABEL) == recipe:
            return str(image.id)
    raise AssertionError(f"{images.HELPERS} keeps being rebuilt from another checkout")


@pytest.fixture(scope="module")
def pods(
    docker_client: docker.DockerClient,
    image_builder: ImageBuilder,
    tool_image: str,
    run_labels: dict[str, str],
    unique_name: Callable[[str], str],
) -> Iterator[tuple[Stack, list[Container]]]:
    helpers_id = _helpers_image_id(docker_client, image_builder)
    network = docker_client.networks.create(unique_name("auth-net"), driver="bridge",
                                            labels=run_labels, check_duplicate=True)
    made: list[Container] = []

    def run(image: str, **kwargs: object) -> Container:
        container = docker_client.containers.run(
            image, detach=True, labels=run_labels, name=unique_name("auth"), **kwargs)
        made.append(container)
        return container

    try:
        network.reload()
        gateway = network.attrs["IPAM"]["Config"][0]["Gateway"]
        with mock_aws():
            portal = PortalHarness(issuer=PORTAL, access_lifetime=TOKEN_LIFETIME)
            with portal.serve(gateway) as portal_url:
                hosts = {"portal.dit4c.test": (gateway, int(portal_url.rsplit(":", 1)[1]))}
                for instance in ("a", "b", "w"):
                    tool_port = ECHO_PORT if instance == "w" else images.TEST_TOOL_PORT
                    env = helper_env(portal, instance, listen=f"0.0.0.0:{pod.AUTH_PORT}",
                                     upstream=f"http://127.0.0.1:{tool_port}",
                                     token_base=portal_url)
                    helper = run(helpers_id, command=["python3", "-m", "helpers.auth"],
                                 environment=env, network=network.name)
                    shared = {"network_mode": f"container:{helper.id}"}
                    if instance == "w":
                        tool = run(helpers_id, command=["python3", "-c", ECHO_TOOL,
                                                        "127.0.0.1", str(ECHO_PORT)], **shared)
                        _wait_for_log(tool, "listening")
                    else:
                        run(tool_image, **shared)
                    helper.reload()
                    address = helper.attrs["NetworkSettings"]["Networks"][network.name][
                        "IPAddress"]
                    hosts[f"{instance}.dit4c.test"] = (address, pod.AUTH_PORT)
                markers = {"a": "dit4c test tool", "b": "dit4c test tool",
                           "w": "dit4c echo tool"}
                yield Stack(portal, hosts, markers), made
    finally:
        for container in made:
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(force=True, v=True)
        with contextlib.suppress(docker.errors.NotFound):
            network.remove()


def _wait_for_log(container: Container, text: str, within: float = 30) -> None:
    import time
    deadline = time.monotonic() + within
    while text not in container.logs().decode(errors="replace"):
        container.reload()
        if container.status == "exited" or time.monotonic() > deadline:
            raise AssertionError(f"{container.name} never said {text!r}:\n"
                                 f"{container.logs().decode(errors='replace')}")
        time.sleep(0.1)


def test_helper_runs_on_debians_aiohttp(docker_client, image_builder):
    """The point of this tier: the helper image really has the old aiohttp."""
    out = docker_client.containers.run(
        _helpers_image_id(docker_client, image_builder),
        ["python3", "-c", "import aiohttp, jwt; print(aiohttp.__version__, jwt.__version__)"],
        remove=True,
    ).decode()
    assert out.startswith("3.8."), out


@pytest.mark.timeout(120)
@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.__name__)
async def test_scenario(pods: tuple[Stack, list[Container]], scenario: Scenario) -> None:
    stack, containers = pods
    stack.reset()
    await wait_until_answering(stack)
    try:
        await scenario(stack)
    except BaseException:
        for container in containers:  # the pods outlive this test: show their logs here
            print(f"--- {container.name}\n{container.logs(tail=60).decode(errors='replace')}")
        raise
    finally:
        await stack.close_browsers()
        await asyncio.sleep(0)
