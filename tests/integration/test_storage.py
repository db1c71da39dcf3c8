"""Persistent storage as users get it (issue 13): the real control plane places instances with
their owner's storage, a real node daemon runs them with the real storage helper (the helpers
image), and moto's S3 sits behind :class:`tests.support.s3_gate.S3Gate`, which authorises every
S3 request as AWS would (session policies, expiry). Everything the tool does, it does in its
container, as a user would. A second node (:func:`node_b`, only for the test that needs it) runs
on a second Docker engine, its pods reaching the same S3 on its own pods network's gateway.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import boto3
import botocore.exceptions
import docker
import pytest

from control_plane.accounts import User
from control_plane.bodies import Launch, NewImage, NewUser
from control_plane.records import Instance
from infra.local.aws import LOCAL_ACCESS_KEY
from node_daemon import egress
from node_daemon.network import ensure_pods_network, pods_bridge
from node_daemon.sandboxes import LABEL_SANDBOX
from protocol import pod
from protocol.messages import StorageAccess
from protocol.states import InstanceState
from scripts.cleanup import remove_labelled
from tests.support.control_plane import ControlPlane, control_plane
from tests.support.engines import SecondEngine
from tests.support.node import EventLog, NodeProcess, node_env
from tests.support.polling import until
from tests.support.s3_gate import S3Gate

pytestmark = [pytest.mark.docker]

LIFETIME = 20
"""The storage credentials' lifetime here (seconds; AWS's minimum is 900)."""
LIVE_SECONDS = 10.0
"""The issue's bound: a change in one instance shows in another within this."""


@pytest.fixture(scope="module")
def gate() -> S3Gate:
    return S3Gate(trusted=[LOCAL_ACCESS_KEY])


@pytest.fixture(scope="module")
def plane(docker_client: docker.DockerClient, node_settings: dict[str, str],
          gate: S3Gate) -> Iterator[ControlPlane]:
    gateway = ensure_pods_network(docker_client, node_settings["DIT4C_NODE_PODS_NETWORK"])
    with control_plane(pods_gateway=gateway, storage_seconds=LIFETIME, wrap=gate.wrap) as p:
        yield p


def storage_settings(plane: ControlPlane) -> dict[str, str]:
    """A storage test node's settings: fast storage checks, a pod sandbox kept ready (its
    storage helper made ahead and bound at launch, as in the local stack; launches beside it
    make their own), and S3's port on the host open to its pods (the node's egress policy
    closes every other; the local stack does the same)."""
    return {"DIT4C_NODE_STORAGE_SECONDS": "2", "DIT4C_NODE_SANDBOXES": "1",
            "DIT4C_NODE_POD_HOST_PORTS": str(urlsplit(plane.aws.url or "").port)}


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, plane: ControlPlane,
         node_settings: dict[str, str]) -> Iterator[NodeProcess]:
    settings = {**node_settings, **storage_settings(plane)}
    with NodeProcess(plane, tmp_path_factory.mktemp("storage") / "node", settings).running() \
            as process:
        yield process


@dataclass
class World:
    """The control plane, one node, and what users do through them."""

    plane: ControlPlane
    node: NodeProcess
    client: docker.DockerClient
    gate: S3Gate
    image_id: str
    events: EventLog
    s3: Any = None
    users: dict[str, User] = field(default_factory=dict)
    more_nodes: dict[str, tuple[NodeProcess, docker.DockerClient]] = field(
        default_factory=dict)
    """Nodes beside the first (``node``, on ``client``) with their engines, by node id."""

    def pump(self) -> None:
        """Apply what the node sent, as the control plane's events consumer does."""
        for message in self.events.poll(wait=0):
            # As read back here the signature is gone; signed events: tests/security.
            self.plane.services.events.handle(message)

    def user(self, name: str, quota_mb: int | None = None) -> User:
        if name not in self.users:
            self.users[name] = self.plane.services.accounts.create_user(
                NewUser(username=name, password="a-password-1"))
        if quota_mb is not None:
            self.plane.services.storage.set_quota(name, quota_mb)
        return self.users[name]

    def instance(self, instance_id: str) -> Instance:
        found = self.plane.services.instances.get(instance_id)
        assert found is not None
        return found

    def wait(self, instance_id: str, state: InstanceState, timeout: float = 90) -> Instance:
        deadline = time.monotonic() + timeout
        while True:
            self.pump()
            instance = self.instance(instance_id)
            if instance.state == state:
                return instance
            assert time.monotonic() < deadline, (
                f"{instance_id} is {instance.state.value} ({instance.reason}), not "
                f"{state.value}{self.node_of(instance_id)[0].log_tail()}")
            time.sleep(0.3)

    def launch(self, user: User, cluster_id: str | None = None) -> str:
        deadline = time.monotonic() + 30
        while True:  # the scheduler needs the node's heartbeat
            self.pump()
            instance = self.plane.services.lifecycle.launch(
                user, Launch(image_id=self.image_id,
                             cluster_id=cluster_id or self.plane.cluster_id))
            if instance.state != InstanceState.PENDING:
                return instance.instance_id
            self.plane.services.lifecycle.stop(user, instance.instance_id)
            assert time.monotonic() < deadline, "no node took the instance"
            time.sleep(1)

    def running(self, user: User, cluster_id: str | None = None) -> str:
        instance_id = self.launch(user, cluster_id)
        self.wait(instance_id, InstanceState.RUNNING)
        return instance_id

    def node_of(self, instance_id: str) -> tuple[NodeProcess, docker.DockerClient]:
        """The node the instance was placed on (the first while it is on none), its engine."""
        return self.more_nodes.get(self.instance(instance_id).placed_on or "",
                                   (self.node, self.client))

    def engine(self, instance_id: str) -> docker.DockerClient:
        return self.node_of(instance_id)[1]

    def tool(self, instance_id: str) -> Any:
        return self.engine(instance_id).containers.get(f"dit4c-{instance_id}-{pod.ROLE_TOOL}")

    def sandbox(self, instance_id: str) -> str:
        return str(self.tool(instance_id).labels[LABEL_SANDBOX])

    def storage_helper(self, instance_id: str) -> Any:
        """The pod's storage helper: its sandbox's (made before the instance, maybe)."""
        (helper,) = self.engine(instance_id).containers.list(all=True, filters={"label": [
            f"{LABEL_SANDBOX}={self.sandbox(instance_id)}", f"{pod.LABEL_ROLE}=storage"]})
        return helper

    def sh(self, instance_id: str, script: str, user: str = "") -> tuple[int, str]:
        done = self.tool(instance_id).exec_run(["sh", "-c", script], user=user)
        return done.exit_code, done.output.decode(errors="replace")

    def discard(self, user: User, instance_id: str) -> None:
        self.discard_all([(user, instance_id)])

    def discard_all(self, owned: list[tuple[User, str]]) -> None:
        """Stop, then discard, every (owner, instance) at once, until their pods are gone."""
        for user, instance_id in owned:
            self.plane.services.lifecycle.stop(user, instance_id)
        for user, instance_id in owned:
            self.wait(instance_id, InstanceState.STOPPED)
            self.plane.services.lifecycle.discard(user, instance_id)
        deadline = time.monotonic() + 60
        for _, instance_id in owned:
            while self.engine(instance_id).api.containers(
                    all=True, filters={"label": f"{pod.LABEL_INSTANCE}={instance_id}"}):
                assert time.monotonic() < deadline, f"the pod of {instance_id} is still there"
                time.sleep(0.5)


@pytest.fixture(scope="module")
def world(plane: ControlPlane, node: NodeProcess, docker_client: docker.DockerClient,
          gate: S3Gate, tool_image: str) -> World:
    image = plane.services.catalog.add(NewImage(name="busybox", image=tool_image, port=8080,
                                                cpu=0.2, memory_mb=64))
    world = World(plane, node, docker_client, gate, image.image_id, EventLog(plane, node))
    world.s3 = plane.aws.client("s3")
    return world


@pytest.fixture(scope="module")
def pods_b(plane: ControlPlane, second_engine: SecondEngine, unique_name: Callable[[str], str],
           run_labels: dict[str, str], helpers_image: str) -> Iterator[dict[str, str]]:
    """The second node's settings: the second engine (the session's, stopped with its bridge
    and mounts at the end of the session) and a pods network of its own there, on whose
    gateway (the pods' ``host.docker.internal``) moto is served too, on the port the start
    commands name. On leaving, the network and its egress chains go."""
    network = unique_name("pods-b")
    settings = node_env(second_engine.client, pods_network=network, labels=run_labels,
                        helpers_image=helpers_image, DIT4C_NODE_HELPERS_IMAGE=helpers_image,
                        **storage_settings(plane), **second_engine.env())
    bridge = pods_bridge(second_engine.client, network)
    try:
        plane.serve_aws_on(ensure_pods_network(second_engine.client, network))
        yield settings
    finally:
        egress.remove(bridge)
        second_engine.client.networks.get(network).remove()


@pytest.fixture(scope="module")
def node_b(tmp_path_factory: pytest.TempPathFactory, world: World, second_engine: SecondEngine,
           pods_b: dict[str, str]) -> Iterator[NodeProcess]:
    """A second node on the second engine, in a cluster of its own so that a launch there
    lands on it. On leaving, its pods go (their storage mounts detached)."""
    cluster_id = world.plane.services.nodes.create_cluster("second").cluster_id
    node = NodeProcess(world.plane, tmp_path_factory.mktemp("storage-b") / "node", pods_b,
                       cluster_id=cluster_id)
    try:
        with node.running():
            world.more_nodes[node.node_id] = (node, second_engine.client)
            yield node
    finally:
        if node.node_id:
            remove_labelled(second_engine.client, f"{pod.LABEL_NODE}={node.node_id}")


def stored(world: World, username: str) -> dict[str, bytes]:
    bucket, prefix = world.plane.config.storage_bucket, f"users/{username}/"
    listed = world.s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    return {o["Key"][len(prefix):]: world.s3.get_object(Bucket=bucket, Key=o["Key"])["Body"]
            .read() for o in listed}


def test_a_users_instances_share_live_storage_that_outlives_them(world: World):
    alice = world.user(f"alice{uuid.uuid4().hex[:6]}")
    eve = world.user(f"eve{uuid.uuid4().hex[:6]}")
    one, two, other = world.launch(alice), world.launch(alice), world.launch(eve)
    for instance in (one, two, other):
        world.wait(instance, InstanceState.RUNNING)

    # Written in one running instance: readable in the other within 10 s, neither restarted.
    assert world.sh(one, "mkdir -p /mnt/storage/results && echo 42 > "
                         "/mnt/storage/results/answer.txt") == (0, "")
    seen = until(lambda: world.sh(two, "cat /mnt/storage/results/answer.txt") == (0, "42\n"),
                 LIVE_SECONDS, "a file written in one instance, read in the other")
    # Deleted in one: gone from the other within 10 s.
    assert world.sh(two, "rm /mnt/storage/results/answer.txt")[0] == 0
    gone = until(lambda: world.sh(one, "test -e /mnt/storage/results/answer.txt")[0] == 1,
                 LIVE_SECONDS, "a file deleted in one instance, gone from the other")
    print(f"live: seen after {seen:.1f} s, gone after {gone:.1f} s")
    assert world.sh(one, "echo kept > /mnt/storage/kept.txt") == (0, "")
    # Another user's instance sees nothing of it.
    assert world.sh(other, "ls -A /mnt/storage") == (0, "")
    assert stored(world, eve.username) == {}

    # Discard both; a new instance has the files.
    world.discard_all([(alice, one), (alice, two)])
    three = world.running(alice)
    assert world.sh(three, "cat /mnt/storage/kept.txt; ls /mnt/storage/results") == (0, "kept\n")
    assert stored(world, alice.username) == {"kept.txt": b"kept\n", "results/": b""}
    world.discard(alice, three)
    world.discard(eve, other)


def test_a_users_instances_on_two_nodes_share_live_storage(world: World, node_b: NodeProcess):
    alice = world.user(f"alice{uuid.uuid4().hex[:6]}")
    eve = world.user(f"eve{uuid.uuid4().hex[:6]}")
    here = world.launch(alice)
    there = world.launch(alice, node_b.cluster_id)
    other = world.launch(eve, node_b.cluster_id)  # beside alice's, on the second node
    for instance in (here, there, other):
        world.wait(instance, InstanceState.RUNNING)
    assert world.instance(here).placed_on == world.node.node_id
    assert world.instance(there).placed_on == world.instance(other).placed_on == node_b.node_id

    # Written on one node: readable on the other within 10 s, neither restarted.
    assert world.sh(here, "mkdir -p /mnt/storage/results && echo 42 > "
                          "/mnt/storage/results/answer.txt") == (0, "")
    seen = until(lambda: world.sh(there, "cat /mnt/storage/results/answer.txt") == (0, "42\n"),
                 LIVE_SECONDS, "a file written on one node, read on the other")
    # Deleted on the other: gone from the first within 10 s.
    assert world.sh(there, "rm /mnt/storage/results/answer.txt")[0] == 0
    gone = until(lambda: world.sh(here, "test -e /mnt/storage/results/answer.txt")[0] == 1,
                 LIVE_SECONDS, "a file deleted on one node, gone from the other")
    print(f"live across nodes: seen after {seen:.1f} s, gone after {gone:.1f} s")
    # Another user's instance on the second node sees nothing of it.
    assert world.sh(other, "ls -A /mnt/storage") == (0, "")
    assert stored(world, eve.username) == {}
    assert stored(world, alice.username) == {"results/": b""}
    world.discard_all([(alice, here), (alice, there), (eve, other)])


def test_stolen_credentials_reach_only_their_owners_prefix(world: World):
    alice, mallory = world.user(f"alice{uuid.uuid4().hex[:6]}"), world.user(
        f"mallory{uuid.uuid4().hex[:6]}")
    bucket = world.plane.config.storage_bucket
    world.s3.put_object(Bucket=bucket, Key=f"users/{alice.username}/secret.txt", Body=b"s")
    instance = world.running(mallory)
    # What a helper of mallory's instance holds, however it was taken.
    access: StorageAccess = world.plane.services.storage.access_for(mallory.username)
    creds = access.credentials
    s3 = boto3.client("s3", endpoint_url=world.plane.aws.url, region_name="us-east-1",
                      aws_access_key_id=creds["access_key_id"],
                      aws_secret_access_key=creds["secret_access_key"],
                      aws_session_token=creds["session_token"])
    s3.put_object(Bucket=bucket, Key=f"users/{mallory.username}/mine.txt", Body=b"ok")
    attacks = {
        "list alice": lambda: s3.list_objects_v2(Bucket=bucket,
                                                 Prefix=f"users/{alice.username}/"),
        "list everyone": lambda: s3.list_objects_v2(Bucket=bucket, Prefix="users/"),
        "list the bucket": lambda: s3.list_objects_v2(Bucket=bucket),
        "read alice": lambda: s3.get_object(Bucket=bucket,
                                            Key=f"users/{alice.username}/secret.txt"),
        "write alice": lambda: s3.put_object(Bucket=bucket,
                                             Key=f"users/{alice.username}/x", Body=b"x"),
        "delete alice": lambda: s3.delete_object(Bucket=bucket,
                                                 Key=f"users/{alice.username}/secret.txt"),
        "copy alice's": lambda: s3.copy_object(
            Bucket=bucket, Key=f"users/{mallory.username}/copy",
            CopySource={"Bucket": bucket, "Key": f"users/{alice.username}/secret.txt"}),
    }
    for what, attack in attacks.items():
        with pytest.raises(botocore.exceptions.ClientError) as refused:
            attack()
        assert refused.value.response["Error"]["Code"] == "AccessDenied", what
    # A key with ".." is a key like any other: it reaches nothing of alice's.
    with pytest.raises(botocore.exceptions.ClientError) as missing:
        s3.get_object(Bucket=bucket,
                      Key=f"users/{mallory.username}/../{alice.username}/secret.txt")
    assert missing.value.response["Error"]["Code"] == "NoSuchKey"
    assert stored(world, alice.username) == {"secret.txt": b"s"}
    # The tool itself cannot read any of it: not in its environment, not in its storage.
    _, env = world.sh(instance, "env; cat /proc/1/environ")
    assert creds["secret_access_key"] not in env
    assert world.sh(instance, f"grep -rl {creds['secret_access_key']} /mnt /tmp") == (1, "")
    world.discard(mallory, instance)


def test_links_and_unsafe_keys_lead_nowhere(world: World):
    bob = world.user(f"bob{uuid.uuid4().hex[:6]}")
    bucket, prefix = world.plane.config.storage_bucket, f"users/{bob.username}/"
    for key in ("../escaped.txt", "a//b.txt", "./dot.txt", "ok.txt"):
        world.s3.put_object(Bucket=bucket, Key=prefix + key, Body=b"planted")
    instance = world.running(bob)
    assert world.sh(instance, "ls -A /mnt/storage") == (0, "a\nok.txt\n")
    assert world.sh(instance, "ls -A /mnt/storage/a") == (0, "")
    for target in ("/etc", "/proc/self/environ", "/nowhere", "loop"):
        code, output = world.sh(instance, f"ln -s {target} /mnt/storage/link")
        assert code != 0 and "Operation not permitted" in output, (target, output)
    code, output = world.sh(instance, "ln /mnt/storage/ok.txt /mnt/storage/hard")
    assert code != 0 and "Operation not permitted" in output
    code, output = world.sh(instance, "mkfifo /mnt/storage/fifo")
    assert code != 0
    # What the helper reads and writes stays under the user's prefix.
    assert world.sh(instance, "cat /mnt/storage/ok.txt; cd /mnt/storage/../..; pwd") == (
        0, "planted/\n")
    assert stored(world, bob.username) == {"../escaped.txt": b"planted", "a//b.txt": b"planted",
                                           "./dot.txt": b"planted", "ok.txt": b"planted"}
    world.discard(bob, instance)


def test_writes_beyond_the_quota_fail_in_the_tool(world: World):
    quinn = world.user(f"quinn{uuid.uuid4().hex[:6]}", quota_mb=1)
    instance = world.running(quinn)
    code, output = world.sh(instance, "dd if=/dev/zero of=/mnt/storage/big bs=64k count=32")
    assert code != 0 and "Disk quota exceeded" in output, output
    code, output = world.sh(instance, "df -k /mnt/storage | tail -1")
    assert code == 0 and " 1024 " in output, output  # the quota is the file system's size
    # The launch did not wait for the usage count (a listing of the whole prefix): the helper
    # said ready first, and counted after.
    logs = world.storage_helper(instance).logs().decode(errors="replace")
    assert "serving s3://" in logs and "usage counted" in logs, logs
    assert logs.index("serving s3://") < logs.index("usage counted"), logs
    # Removing files makes room again; nothing written is lost silently.
    assert world.sh(instance, "rm /mnt/storage/big && echo small > /mnt/storage/small") == (0, "")
    assert stored(world, quinn.username) == {"small": b"small\n"}
    world.discard(quinn, instance)


def test_credentials_expire_and_are_renewed_during_a_long_write(world: World):
    carol = world.user(f"carol{uuid.uuid4().hex[:6]}")
    instance = world.running(carol)
    lines = int(LIFETIME * 2.5)
    # One file kept open and written a line a second for 2.5 credential lifetimes, then closed.
    script = (f"(for i in $(seq {lines}); do echo line $i; sleep 1; done) "
              "> /mnt/storage/long.log && echo stored")
    assert world.sh(instance, script) == (0, "stored\n")
    expected = "".join(f"line {i}\n" for i in range(1, lines + 1)).encode()
    assert stored(world, carol.username) == {"long.log": expected}
    assert world.node.log_text().count(f"storage of {instance} renewed") >= 2
    assert not [r for r in world.gate.refusals if carol.username in r]
    world.discard(carol, instance)


def test_a_storage_failure_fails_the_launch_and_later_shows_without_stopping_the_tool(
        world: World):
    dave = world.user(f"dave{uuid.uuid4().hex[:6]}")
    # At launch: S3 refuses (here: it is down) -> the launch fails with the reason.
    world.gate.down = True
    try:
        failing = world.launch(dave)
        failed = world.wait(failing, InstanceState.FAILED, timeout=120)
    finally:
        world.gate.down = False
    assert "storage failed" in (failed.reason or ""), failed.reason
    assert "ServiceUnavailable" in (failed.reason or ""), failed.reason
    # Later: the tool keeps running, the instance shows what is wrong, then that it is well.
    instance = world.running(dave)
    world.s3.put_object(Bucket=world.plane.config.storage_bucket,
                        Key=f"users/{dave.username}/later.txt", Body=b"later")
    world.gate.down = True
    try:
        code, output = world.sh(instance, "sleep 8; cat /mnt/storage/later.txt")
        assert code != 0, output

        def reported() -> bool:
            world.pump()
            item = world.instance(instance)
            return item.storage_ok is False and bool(item.storage_message)

        until(reported, 30, "the storage failure shown on the instance")
        assert world.tool(instance).status == "running"
    finally:
        world.gate.down = False
    until(lambda: world.sh(instance, "cat /mnt/storage/later.txt") == (0, "later"), 15,
          "the file read once S3 is back")

    def well() -> bool:
        world.pump()
        return world.instance(instance).storage_ok is True

    until(well, 60, "storage shown well again")
    world.discard(dave, instance)


def test_a_killed_storage_helper_is_started_again_and_bound(world: World):
    """The storage keeper's restart of a helper made ahead: it comes up with no settings, and
    the keeper binds it again from the instance's record; the tool sees the storage again."""
    erin = world.user(f"erin{uuid.uuid4().hex[:6]}")
    instance = world.running(erin)
    sandbox = world.sandbox(instance)
    assert world.sh(instance, "echo before > /mnt/storage/before.txt") == (0, "")
    helper = world.storage_helper(instance)
    # Its credentials are in no container's configuration: the bind brought them.
    access = world.plane.services.storage.access_for(erin.username)
    key = access.credentials["access_key_id"]
    for container in world.engine(instance).containers.list(
            all=True, filters={"label": f"{LABEL_SANDBOX}={sandbox}"}):
        assert key not in "\n".join(container.attrs["Config"]["Env"] or []), container.name
    started = helper.attrs["State"]["StartedAt"]
    helper.kill()
    until(lambda: world.sh(instance, "cat /mnt/storage/before.txt") == (0, "before\n"), 60,
          "the storage back in the tool after its helper was killed")
    helper.reload()
    assert helper.status == "running" and helper.attrs["State"]["StartedAt"] != started
    assert world.sh(instance, "echo after > /mnt/storage/after.txt") == (0, "")
    assert stored(world, erin.username) == {"before.txt": b"before\n", "after.txt": b"after\n"}
    assert f"storage helper of {instance} stopped" in world.node.log_text()
    world.discard(erin, instance)
    # The sandbox's storage volume goes with the pod (after its containers).
    until(lambda: world.client.volumes.list(
        filters={"label": f"{LABEL_SANDBOX}={sandbox}"}) == [], 30, "the storage volume removed")
