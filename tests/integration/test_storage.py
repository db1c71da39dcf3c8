"""Persistent storage as users get it (issue 13): the real control plane places instances with
their owner's storage, a real node daemon runs them with the real storage helper (the helpers
image), and moto's S3 sits behind :class:`tests.support.s3_gate.S3Gate`, which authorises every
S3 request as AWS would (session policies, expiry). Everything the tool does, it does in its
container, as a user would.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
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
from node_daemon.network import ensure_pods_network
from protocol import pod
from protocol.messages import StorageAccess
from protocol.states import InstanceState
from tests.support.control_plane import ControlPlane, control_plane
from tests.support.node import EventLog, NodeProcess
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


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, plane: ControlPlane,
         node_settings: dict[str, str]) -> Iterator[NodeProcess]:
    # The pods reach S3 on the gateway at the control plane's AWS port: the one host port the
    # egress policy opens to them (node_daemon/egress.py).
    settings = {**node_settings, "DIT4C_NODE_STORAGE_SECONDS": "2",
                "DIT4C_NODE_POD_HOST_PORTS": str(urlsplit(plane.aws.url or "").port)}
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
                f"{state.value}{self.node.log_tail()}")
            time.sleep(0.3)

    def launch(self, user: User) -> str:
        deadline = time.monotonic() + 30
        while True:  # the scheduler needs the node's heartbeat
            self.pump()
            instance = self.plane.services.lifecycle.launch(
                user, Launch(image_id=self.image_id, cluster_id=self.plane.cluster_id))
            if instance.state != InstanceState.PENDING:
                return instance.instance_id
            self.plane.services.lifecycle.stop(user, instance.instance_id)
            assert time.monotonic() < deadline, "no node took the instance"
            time.sleep(1)

    def running(self, user: User) -> str:
        instance_id = self.launch(user)
        self.wait(instance_id, InstanceState.RUNNING)
        return instance_id

    def tool(self, instance_id: str) -> Any:
        return self.client.containers.get(f"dit4c-{instance_id}-{pod.ROLE_TOOL}")

    def sh(self, instance_id: str, script: str, user: str = "") -> tuple[int, str]:
        done = self.tool(instance_id).exec_run(["sh", "-c", script], user=user)
        return done.exit_code, done.output.decode(errors="replace")

    def discard(self, user: User, instance_id: str) -> None:
        self.plane.services.lifecycle.stop(user, instance_id)
        self.wait(instance_id, InstanceState.STOPPED)
        self.plane.services.lifecycle.discard(user, instance_id)
        deadline = time.monotonic() + 60
        while self.client.api.containers(
                all=True, filters={"label": f"{pod.LABEL_INSTANCE}={instance_id}"}):
            assert time.monotonic() < deadline, "the pod is still there"
            time.sleep(0.5)


@pytest.fixture(scope="module")
def world(plane: ControlPlane, node: NodeProcess, docker_client: docker.DockerClient,
          gate: S3Gate, tool_image: str) -> World:
    image = plane.services.catalog.add(NewImage(name="busybox", image=tool_image, port=8080,
                                                cpu=0.2, memory_mb=64))
    world = World(plane, node, docker_client, gate, image.image_id, EventLog(plane, node))
    world.s3 = plane.aws.client("s3")
    return world


def stored(world: World, username: str) -> dict[str, bytes]:
    bucket, prefix = world.plane.config.storage_bucket, f"users/{username}/"
    listed = world.s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    return {o["Key"][len(prefix):]: world.s3.get_object(Bucket=bucket, Key=o["Key"])["Body"]
            .read() for o in listed}


def until(check: Any, timeout: float, what: str) -> float:
    """Seconds until ``check()`` is true; fails after ``timeout``."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < timeout, f"{what}: not within {timeout} s"
        time.sleep(0.1)
    return time.monotonic() - started


def test_a_users_instances_share_live_storage_that_outlives_them(world: World):
    alice = world.user(f"alice{uuid.uuid4().hex[:6]}")
    eve = world.user(f"eve{uuid.uuid4().hex[:6]}")
    one, two = world.running(alice), world.running(alice)
    other = world.running(eve)

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
    world.discard(alice, one)
    world.discard(alice, two)
    three = world.running(alice)
    assert world.sh(three, "cat /mnt/storage/kept.txt; ls /mnt/storage/results") == (0, "kept\n")
    assert stored(world, alice.username) == {"kept.txt": b"kept\n", "results/": b""}
    world.discard(alice, three)
    world.discard(eve, other)


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
