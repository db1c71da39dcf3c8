"""The node's pool of ready pod sandboxes (``node_daemon.sandboxes``) on the real engine.

One pooled sandbox's life: made free (no instance's settings anywhere), claimed by a launch
(the holder renamed for the instance, the listener bound over an attach: the tool answers when
the launch returns), refusing a second instance's bind (the attack), removed with its pod;
the pool refilled with a new one, kept by a restarted runner (never bound), removed when a
container of it stopped, and drained when the daemon stops.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import docker
import pytest

from node_daemon.errors import LaunchError
from node_daemon.network import ensure_pods_network
from node_daemon.pods import PodRunner, PodSettings, helper_env
from node_daemon.sandboxes import FREE_PREFIX, LABEL_SANDBOX, Binding, holder_name
from protocol import pod
from protocol.sandbox import ENV_SANDBOX
from tests.support.node import sample_start

pytestmark = [pytest.mark.docker]


@pytest.fixture(scope="module")
def settings(docker_client: docker.DockerClient, unique_name: Callable[[str], str],
             helpers_image: str, run_labels: dict[str, str]) -> PodSettings:
    network = unique_name("pods-sandboxes")
    ensure_pods_network(docker_client, network, run_labels)
    return PodSettings(node_id=f"node{uuid.uuid4().hex[:8]}", network=network,
                       helpers_image=helpers_image, labels=run_labels, sandboxes=1)


@pytest.fixture(scope="module")
def runner(docker_client: docker.DockerClient, settings: PodSettings) -> Iterator[PodRunner]:
    made = PodRunner(docker_client, settings)
    yield made
    made.close()


def sandbox_rows(client: docker.DockerClient, sandbox_id: str) -> dict[str, dict[str, Any]]:
    rows = client.api.containers(all=True, filters={"label": f"{LABEL_SANDBOX}={sandbox_id}"})
    return {row["Labels"][pod.LABEL_ROLE]: row for row in rows}


def test_a_pooled_sandbox_serves_one_instance_and_goes_with_it(
        docker_client: docker.DockerClient, runner: PodRunner, tool_image: str):
    pool = runner.sandboxes
    pool.reconcile()
    free = pool.fill_one()
    assert free is not None and pool.free() == [free.id]
    rows = sandbox_rows(docker_client, free.id)
    assert sorted(rows) == [pod.ROLE_LISTENER, pod.ROLE_NETNS]
    assert rows[pod.ROLE_NETNS]["Names"] == [f"/{FREE_PREFIX}{free.id}-netns"]
    listener = docker_client.containers.get(free.listener)
    assert listener.attrs["Config"]["Env"].count(f"{ENV_SANDBOX}={free.id}") == 1
    assert pod.LABEL_INSTANCE not in listener.labels

    iid = "s" + uuid.uuid4().hex[:12]
    start = sample_start(iid, tool_image)
    runner.launch(start, 60, lambda _: None)  # returns once the listener says the tool answers
    containers = runner.containers(iid)
    assert sorted(containers) == [pod.ROLE_LISTENER, pod.ROLE_NETNS, pod.ROLE_TOOL]
    assert {c.sandbox for c in containers.values()} == {free.id}
    assert containers[pod.ROLE_NETNS].name == holder_name(iid)
    assert runner.check(start) is None
    assert iid in runner.instances()
    assert pool.free() == []
    # The instance's secrets came over the attach: in no container's configuration.
    for role in (pod.ROLE_NETNS, pod.ROLE_LISTENER):
        env = "\n".join(docker_client.containers.get(containers[role].id).attrs["Config"]["Env"])
        assert start.tunnel_token not in env
        assert start.oauth.client_secret not in env

    # The attack: bind the claimed sandbox's listener to another instance.
    other = sample_start("s" + uuid.uuid4().hex[:12], tool_image)
    binding = Binding(docker_client, free.listener)
    try:
        with pytest.raises(LaunchError, match="bound to another instance"):
            binding.bind(helper_env(other, pod.ROLE_LISTENER), 20)
    finally:
        binding.close()

    refill = pool.fill_one()
    assert refill is not None and refill.id != free.id
    runner.remove(iid)
    assert sandbox_rows(docker_client, free.id) == {}
    assert runner.containers(iid) == {}
    assert iid not in runner.instances()
    assert pool.free() == [refill.id]


def test_a_restarted_runner_keeps_free_sandboxes_and_drops_broken_ones(
        docker_client: docker.DockerClient, runner: PodRunner, settings: PodSettings):
    pool = runner.sandboxes
    if not pool.free():
        pool.fill_one()
    (kept,) = pool.free()
    # A restarted daemon (a new runner, same node): the free one was never bound, it stays.
    again = PodRunner(docker_client, settings)
    try:
        assert again.sandboxes.reconcile() == {"free": 1, "removed": 0}
        assert again.sandboxes.free() == [kept]
        # A free sandbox whose listener stopped cannot serve: removed, both containers.
        docker_client.api.stop(sandbox_rows(docker_client, kept)[pod.ROLE_LISTENER]["Id"],
                               timeout=0)
        assert again.sandboxes.reconcile() == {"free": 0, "removed": 2}
        assert sandbox_rows(docker_client, kept) == {}
        # The daemon stopping: its free sandboxes go.
        made = again.sandboxes.fill_one()
        assert made is not None
        assert again.sandboxes.drain() == 1
        assert sandbox_rows(docker_client, made.id) == {}
        assert again.sandboxes.fill_one() is None  # nothing is made after a drain
    finally:
        again.close()
