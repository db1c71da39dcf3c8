"""The locally built images work the way the rest of the system uses them.

The tool image serves its page to a client that reaches it over a Docker network (the host
talks to the container's address on a network this test made; no published port), and the
helpers image runs the repository's code on Debian's Python packages as an unprivileged user.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import docker
import pytest
import requests
from docker.models.containers import Container
from docker.models.networks import Network

from scripts import images
from scripts.build_images import ImageBuilder

pytestmark = pytest.mark.docker

ContainerIp = Callable[[Container, Network], str]


def get_when_ready(url: str, timeout: float = 10.0) -> requests.Response:
    """GET ``url`` once something listens there, or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return requests.get(url, timeout=2)
        except requests.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_tool_image_serves_its_page_over_a_docker_network(
    tool_image: str,
    run_container: Callable[..., Container],
    docker_network: Network,
    container_ip: ContainerIp,
    docker_client: docker.DockerClient,
):
    config = docker_client.images.get(tool_image).attrs["Config"]
    port = int(config["Labels"][images.PORT_LABEL])
    assert f"{port}/tcp" in config["ExposedPorts"]

    tool = run_container(tool_image)
    response = get_when_ready(f"http://{container_ip(tool, docker_network)}:{port}/")

    assert response.status_code == 200
    assert "dit4c test tool" in response.text
    assert requests.get(f"http://{container_ip(tool, docker_network)}:{port}/nope", timeout=2
                        ).status_code == 404


def test_helpers_image_runs_repo_code_on_debian_python(
    helpers_image: str, run_container: Callable[..., Container]
):
    probe = (
        "import json, os, aiohttp, jwt, cryptography, yaml, protocol, protocol.tokens, helpers,"
        " helpers.upload.push;"
        "print(json.dumps({'aiohttp': aiohttp.__version__, 'uid': os.getuid(),"
        " 'protocol': protocol.__file__, 'cwd': os.getcwd()}))"
    )
    container = run_container(helpers_image, command=["python3", "-c", probe])
    status = container.wait(timeout=60)
    output = container.logs().decode()

    assert status["StatusCode"] == 0, output
    facts = json.loads(output.strip().splitlines()[-1])
    assert facts["aiohttp"].startswith("3.8."), "bookworm ships aiohttp 3.8"
    assert facts["uid"] == images.HELPERS_UID
    assert facts["protocol"] == "/opt/dit4c/protocol/__init__.py"


def test_images_are_reused_when_their_recipe_is_unchanged(image_builder: ImageBuilder):
    # Compared with this checkout's own first ensure, not with what the names point at now:
    # another checkout on the shared engine may have moved dit4c/helpers:dev meanwhile (the
    # builder then points it back at this recipe's image, which is a reuse).
    first = image_builder.ensure(images.ALL)
    results = image_builder.ensure(images.ALL)

    assert [r.action for r in results] == ["reused"] * len(images.ALL)
    assert {r.name: r.recipe for r in results} == {r.name: r.recipe for r in first}
    assert max(r.seconds for r in results) < 5
