"""The node's pool of ready pod sandboxes (``node_daemon.sandboxes``) on the real engine.

One pooled sandbox's life: made free (no instance's settings anywhere), claimed by a launch
(the holder renamed for the instance, the listener bound over an attach: the tool answers when
the launch returns; a launch without storage drops the sandbox's storage helper and volume),
refusing a second instance's bind (the attack), removed with its pod; the pool refilled with a
new one, kept by a restarted runner (never bound), removed when a container of it stopped, and
drained when the daemon stops. A pooled storage helper bound at launch to the instance's
storage (moto's S3 on the pods gateway), its credentials in no container's configuration, its
volume removed with the pod; a store that refuses fails the launch with its reason.
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
from node_daemon.sandboxes import (
    FREE_PREFIX,
    LABEL_SANDBOX,
    Binding,
    holder_name,
    storage_volume,
)
from protocol import pod
from protocol.messages import StorageAccess
from protocol.sandbox import ENV_SANDBOX
from tests.ports import free_port
from tests.support.node import pods_s3, sample_start
from tests.support.polling import until

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


def sandbox_volumes(client: docker.DockerClient, sandbox_id: str) -> list[str]:
    found = client.api.volumes(filters={"label": f"{LABEL_SANDBOX}={sandbox_id}"})
    return [volume["Name"] for volume in found.get("Volumes") or []]


@pytest.fixture(scope="module")
def s3(docker_client: docker.DockerClient, settings: PodSettings) -> Iterator[tuple[Any, str]]:
    """moto's S3 on the pods bridge's gateway (no daemon here, so no egress policy closes it):
    (a boto3 client on the host, the endpoint as pods see it)."""
    with pods_s3(docker_client, settings.network, free_port()) as found:
        yield found


def free_sandbox(pool: Any) -> str:
    pool.reconcile()
    if not pool.free():
        pool.fill_one()
    (sandbox_id,) = pool.free()
    return str(sandbox_id)


def test_a_pooled_sandbox_serves_one_instance_and_goes_with_it(
        docker_client: docker.DockerClient, runner: PodRunner, tool_image: str):
    pool = runner.sandboxes
    pool.reconcile()
    free = pool.fill_one()
    assert free is not None and pool.free() == [free.id]
    rows = sandbox_rows(docker_client, free.id)
    assert sorted(rows) == [pod.ROLE_LISTENER, pod.ROLE_NETNS, pod.ROLE_STORAGE]
    assert rows[pod.ROLE_NETNS]["Names"] == [f"/{FREE_PREFIX}{free.id}-netns"]
    for role in (pod.ROLE_LISTENER, pod.ROLE_STORAGE):
        helper = docker_client.containers.get(rows[role]["Id"])
        assert helper.attrs["Config"]["Env"].count(f"{ENV_SANDBOX}={free.id}") == 1
        assert pod.LABEL_INSTANCE not in helper.labels
    assert sandbox_volumes(docker_client, free.id) == [storage_volume(free.id)]

    iid = "s" + uuid.uuid4().hex[:12]
    start = sample_start(iid, tool_image)
    runner.launch(start, 60, lambda _: None)  # returns once the listener says the tool answers
    # No storage asked: the sandbox's storage helper and its volume go, off the launch's path.
    until(lambda: pod.ROLE_STORAGE not in sandbox_rows(docker_client, free.id), 30,
          "the unused storage helper removed")
    until(lambda: sandbox_volumes(docker_client, free.id) == [], 10,
          "the unused storage volume removed")
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
        # A free sandbox whose listener stopped cannot serve: removed, every container and
        # its storage volume (the storage helper stopped first: it detaches its mount).
        docker_client.api.stop(sandbox_rows(docker_client, kept)[pod.ROLE_LISTENER]["Id"],
                               timeout=0)
        assert again.sandboxes.reconcile() == {"free": 0, "removed": 3}
        assert sandbox_rows(docker_client, kept) == {}
        assert sandbox_volumes(docker_client, kept) == []
        # The daemon stopping: its free sandboxes go.
        made = again.sandboxes.fill_one()
        assert made is not None
        assert again.sandboxes.drain() == 1
        assert sandbox_rows(docker_client, made.id) == {}
        assert sandbox_volumes(docker_client, made.id) == []
        assert again.sandboxes.fill_one() is None  # nothing is made after a drain
    finally:
        again.close()


def test_a_pooled_storage_helper_is_bound_at_launch_and_goes_with_the_pod(
        docker_client: docker.DockerClient, runner: PodRunner, tool_image: str,
        s3: tuple[Any, str]):
    client, endpoint = s3
    sandbox_id = free_sandbox(runner.sandboxes)
    helper_id = sandbox_rows(docker_client, sandbox_id)[pod.ROLE_STORAGE]["Id"]
    iid = "s" + uuid.uuid4().hex[:12]
    bucket, prefix = f"b-{iid}", f"users/{iid}/"
    client.create_bucket(Bucket=bucket)
    client.put_object(Bucket=bucket, Key=prefix + "hello.txt", Body=b"from s3\n")
    secret = f"storage-secret-{uuid.uuid4().hex}"
    access = StorageAccess(kind="s3", bucket=bucket, prefix=prefix, endpoint_url=endpoint,
                           credentials={"access_key_id": "testing", "secret_access_key": secret})
    start = sample_start(iid, tool_image, storage=access)
    runner.launch(start, 60, lambda _: None)
    containers = runner.containers(iid)
    assert containers[pod.ROLE_STORAGE].id == helper_id  # the pooled one, bound
    tool = docker_client.containers.get(containers[pod.ROLE_TOOL].id)
    done = tool.exec_run(["cat", "/mnt/storage/hello.txt"])
    assert (done.exit_code, done.output) == (0, b"from s3\n")
    for container in containers.values():
        env = "\n".join(docker_client.containers.get(container.id).attrs["Config"]["Env"] or [])
        assert secret not in env, container.role
    # The same storage bound again (what the storage keeper does to renew): taken.
    helper = runner.storage_helper(iid)
    assert helper is not None and helper.binds
    runner.bind_storage(helper, access)
    # Other storage: refused.
    other = StorageAccess(kind="s3", bucket=bucket, prefix="users/someone-else/",
                          endpoint_url=endpoint, credentials={"access_key_id": "testing",
                                                              "secret_access_key": "x"})
    with pytest.raises(LaunchError, match=f"bound to s3://{bucket}/{prefix}"):
        runner.bind_storage(helper, other)

    runner.remove(iid)
    assert sandbox_rows(docker_client, sandbox_id) == {}
    assert sandbox_volumes(docker_client, sandbox_id) == []


def test_a_store_that_refuses_fails_the_launch_with_its_reason(
        docker_client: docker.DockerClient, runner: PodRunner, tool_image: str,
        s3: tuple[Any, str]):
    _, endpoint = s3
    sandbox_id = free_sandbox(runner.sandboxes)
    iid = "s" + uuid.uuid4().hex[:12]
    start = sample_start(iid, tool_image, storage=StorageAccess(
        kind="s3", bucket=f"none-{iid}", prefix=f"users/{iid}/", endpoint_url=endpoint,
        credentials={"access_key_id": "testing", "secret_access_key": "testing"}))
    with pytest.raises(LaunchError, match=rf"^storage failed: cannot use s3://none-{iid}/"
                                          rf"users/{iid}/: .*NoSuchBucket"):
        runner.launch(start, 60, lambda _: None)
    assert pod.ROLE_TOOL in runner.containers(iid)  # made, never started
    assert runner.containers(iid)[pod.ROLE_TOOL].status == "created"
    runner.remove(iid)
    assert sandbox_rows(docker_client, sandbox_id) == {}
    assert sandbox_volumes(docker_client, sandbox_id) == []
