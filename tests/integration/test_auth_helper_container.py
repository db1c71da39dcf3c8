"""The auth helper in its real container (``dit4c/helpers:dev``: Debian bookworm's aiohttp 3.8,
python3-jwt, python3-cryptography), in front of real tools sharing its network namespace; the
portal's real OAuth2 server listens on the network's gateway.

Two paths, every scenario of ``tests/support/auth_scenarios.py`` (attacks included) on each:

- ``direct``: the browser talks to the auth helpers' container addresses;
- ``through-router`` (end to end): pods composed as the node daemon does it (the listener helper
  owns the network namespace and tunnels out to the real edge router on the gateway; auth helper
  and tool join it), and the browser talks only to the router.

Pods: ``a`` and ``b`` serve the busybox test tool, ``w`` the echo tool (HTTP + WebSocket, run
with the image's own python3). The browser is a cookie-jar client that resolves
``*.dit4c.test`` to the helpers (direct) or to the router.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import docker
import docker.errors
import pytest
from docker.models.containers import Container
from moto import mock_aws

from protocol import pod
from protocol.messages import Revocation
from protocol.tokens import SigningKey
from protocol.tunnel import TUNNEL_PATH
from scripts import images
from scripts.build_images import ImageBuilder
from tests.support import router as router_harness
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


class RouterThread:
    """The real edge router on its own event loop in a thread, so module-scoped pods can use it
    from every test's loop. Verifies tunnel tokens with ``key``."""

    def __init__(self, key: SigningKey, host: str, sqs: Any, revocations_url: str) -> None:
        self.key, self.host = key, host
        self.sqs, self.revocations_url = sqs, revocations_url
        self.address: tuple[str, int] | None = None
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True,
                                        name="auth-test-router")

    async def _main(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        router = await router_harness.start_router(
            self.key, listen=((self.host, 0),), sqs=self.sqs,
            revocations_queue_url=self.revocations_url)
        try:
            self.address = router.addresses[0]
            self._ready.set()
            await self._stop.wait()
        finally:
            await router.stop()

    def __enter__(self) -> RouterThread:
        self._thread.start()
        assert self._ready.wait(30), "router did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=30)


@pytest.fixture(scope="module", params=["direct", "through-router"])
def pods(
    request: pytest.FixtureRequest,
    *,
    docker_client: docker.DockerClient,
    image_builder: ImageBuilder,
    tool_image: str,
    run_labels: dict[str, str],
    unique_name: Callable[[str], str],
) -> Iterator[tuple[Stack, list[Container]]]:
    """Pods a, b, w. ``direct``: the browser talks to each auth helper, whose network namespace
    the tool shares. ``through-router``: composed as the node daemon does it, the listener owns
    the namespace and tunnels to the real edge router, which the browser talks to."""
    via_router = request.param == "through-router"
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
        with contextlib.ExitStack() as stack:
            stack.enter_context(mock_aws())
            portal = PortalHarness(issuer=PORTAL, access_lifetime=TOKEN_LIFETIME)
            portal_url = stack.enter_context(portal.serve(gateway))
            hosts = {"portal.dit4c.test": (gateway, int(portal_url.rsplit(":", 1)[1]))}
            tunnel_key = SigningKey.generate()
            sqs = boto3.client("sqs", region_name="us-east-1")
            revocations = sqs.create_queue(QueueName=unique_name("revocations"))["QueueUrl"]
            router = stack.enter_context(RouterThread(tunnel_key, gateway, sqs, revocations)) \
                if via_router else None

            def revoke(instance: str) -> None:
                message = Revocation(instance_id=instance, hostname=f"{instance}.dit4c.test",
                                     reason="discarded")
                sqs.send_message(QueueUrl=revocations, MessageBody=message.encode())

            # d: only end to end, for the revocation scenario (its route dies for good).
            for instance in ("a", "b", "w", "d") if via_router else ("a", "b", "w"):
                tool_port = ECHO_PORT if instance == "w" else images.TEST_TOOL_PORT
                # Direct: the test reaches the helper from outside its (own) network namespace.
                inside = "127.0.0.1" if via_router else "0.0.0.0"  # noqa: S104
                listen = f"{inside}:{pod.AUTH_PORT}"
                env = helper_env(portal, instance, listen=listen,
                                 upstream=f"http://127.0.0.1:{tool_port}",
                                 token_base=portal_url)
                if router is not None and router.address is not None:
                    owner = run(helpers_id, command=["python3", "-m", "helpers.listener"],
                                network=network.name, environment={
                                    pod.ENV_TUNNEL_TOKEN: router_harness.token(tunnel_key,
                                                                             instance),
                                    pod.ENV_ROUTER_URLS: "ws://{}:{}{}".format(
                                        *router.address, TUNNEL_PATH),
                                    pod.ENV_HOSTNAME: f"{instance}.{router_harness.DOMAIN}",
                                    pod.ENV_UPSTREAM: f"127.0.0.1:{pod.AUTH_PORT}",
                                })
                    run(helpers_id, command=["python3", "-m", "helpers.auth"], environment=env,
                        network_mode=f"container:{owner.id}")
                    hosts[f"{instance}.dit4c.test"] = router.address
                else:
                    owner = run(helpers_id, command=["python3", "-m", "helpers.auth"],
                                environment=env, network=network.name)
                    owner.reload()
                    address = owner.attrs["NetworkSettings"]["Networks"][network.name][
                        "IPAddress"]
                    hosts[f"{instance}.dit4c.test"] = (address, pod.AUTH_PORT)
                shared = {"network_mode": f"container:{owner.id}"}
                if instance == "w":
                    tool = run(helpers_id, command=["python3", "-c", ECHO_TOOL,
                                                    "127.0.0.1", str(ECHO_PORT)], **shared)
                    _wait_for_log(tool, "listening")
                else:
                    run(tool_image, **shared)
            markers = {"a": "dit4c test tool", "b": "dit4c test tool", "w": "dit4c echo tool"}
            if via_router:
                markers["d"] = "dit4c test tool"
            yield Stack(portal, hosts, markers, revoke=revoke if via_router else None), made
    finally:
        for container in made:
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(force=True, v=True)
        with contextlib.suppress(docker.errors.NotFound):
            network.remove()


def _wait_for_log(container: Container, text: str, within: float = 30) -> None:
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
