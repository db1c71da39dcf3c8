"""Acknowledged means durable: every change the local stack's moto answered 2xx comes back after
a crash, whatever was compacted when; damage is set aside and said.

A crash here is moto's state thrown away (``/moto-api/reset``: moto's state is per process, so
a restarted stack is simulated by emptying it) with no final snapshot; the journal's file is
closed as the kernel would close it. ``tests/integration/test_local_crash.py`` kills the real
stack's processes.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError

from infra.local.aws import AwsEndpoint
from infra.local.durable import Compactor, DurableState, JournaledApp, Recovery
from infra.local.errors import JournalError
from infra.local.journal import Journal
from infra.local.moto_server import MotoServer
from infra.local.provision import Provisioner, Stack
from infra.local.snapshot import Snapshotter
from infra.local.template import Template

PARAMETERS = {
    "PortalUrl": "http://localhost:8000",
    "RouterDomain": "localhost",
    "RouterScheme": "http",
    "RouterTunnelUrls": "ws://127.0.0.1:8080/.dit4c/tunnel",
}


@dataclass
class Booted:
    server: MotoServer
    endpoint: AwsEndpoint
    stack: Stack
    snapshotter: Snapshotter
    journal: Journal
    state: DurableState
    recovery: Recovery

    def table(self, name: str) -> str:
        return self.stack.environment[name]

    def crash(self) -> None:
        """Stop serving with no last snapshot; what the journal holds is what a kill leaves."""
        self.journal.close()
        self.server.stop()

    def state_now(self) -> dict[str, Any]:
        manifest = self.snapshotter.capture().manifest
        manifest["parameters"] = [p for p in manifest["parameters"]
                                  if p["Name"].startswith("/test/")]
        return manifest


class Stacks:
    """Boots the durable AWS part of the local stack over a data directory, as a start would."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.running: list[Booted] = []

    def boot(self, journal: Journal | None = None) -> Booted:
        app = JournaledApp()
        server = MotoServer(wrap=app.wrap)
        endpoint = server.start()
        server.reset()
        stack = Provisioner(endpoint, "durable").provision(Template.load(), PARAMETERS)
        snapshotter = Snapshotter(endpoint, stack, self.directory,
                                  stack.environment["DIT4C_NODE_QUEUE_PREFIX"])
        journal = journal or Journal(self.directory / "journal")
        state = DurableState(app, snapshotter, journal)
        booted = Booted(server, endpoint, stack, snapshotter, journal, state, state.recover())
        self.running.append(booted)
        return booted


@pytest.fixture
def stacks(tmp_path) -> Iterator[Stacks]:
    stacks = Stacks(tmp_path / "aws")
    yield stacks
    for booted in stacks.running:
        booted.crash()


def make_every_kind_of_change(booted: Booted, scratch: Path) -> None:
    """What the stack's parts do to the state a snapshot holds, each kind at least once."""
    dynamodb = booted.endpoint.client("dynamodb")
    users = booted.table("DIT4C_USERS_TABLE")
    for name in ("ann", "bob", "cy"):
        dynamodb.put_item(TableName=users, Item={"username": {"S": name}, "n": {"N": "1"},
                                                 "key": {"B": b"\x00\xff"}})
    dynamodb.update_item(TableName=users, Key={"username": {"S": "ann"}},
                         UpdateExpression="ADD n :five", ConditionExpression="n = :one",
                         ExpressionAttributeValues={":five": {"N": "5"}, ":one": {"N": "1"}})
    dynamodb.delete_item(TableName=users, Key={"username": {"S": "bob"}})
    dynamodb.transact_write_items(TransactItems=[
        {"Put": {"TableName": users, "Item": {"username": {"S": "dee"}}}},
        {"Delete": {"TableName": users, "Key": {"username": {"S": "cy"}}}},
    ])
    dynamodb.batch_write_item(RequestItems={booted.table("DIT4C_TOKENS_TABLE"): [
        {"PutRequest": {"Item": {"token_key": {"S": f"t{n}"}}}} for n in range(3)]})
    ssm = booted.endpoint.client("ssm")
    ssm.put_parameter(Name="/test/keys", Value="v1", Type="SecureString")
    ssm.put_parameter(Name="/test/keys", Value="v2", Type="SecureString", Overwrite=True)
    ssm.put_parameter(Name="/test/gone", Value="x", Type="String")
    ssm.delete_parameter(Name="/test/gone")
    s3 = booted.endpoint.client("s3")
    bucket = booted.table("DIT4C_STORAGE_BUCKET")
    s3.put_object(Bucket=bucket, Key="a/b c.txt", Body=b"hello", ContentType="text/plain",
                  Metadata={"under_score": "kept"})
    s3.copy_object(Bucket=bucket, Key="copy", CopySource={"Bucket": bucket, "Key": "a/b c.txt"})
    s3.put_object(Bucket=bucket, Key="gone-1", Body=b"1")
    s3.put_object(Bucket=bucket, Key="gone-2", Body=b"2")
    s3.delete_object(Bucket=bucket, Key="gone-1")
    s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "gone-2"}]})
    big = scratch / "big"
    big.write_bytes(bytes(range(256)) * (6 * 4096))  # two parts of a multipart upload
    s3.upload_file(str(big), bucket, "big", ExtraArgs={"Metadata": {"size": "6M"}},
                   Config=TransferConfig(multipart_threshold=5 << 20,
                                         multipart_chunksize=5 << 20))
    sqs = booted.endpoint.client("sqs")
    queue = sqs.create_queue(QueueName=booted.table("DIT4C_NODE_QUEUE_PREFIX") + "n1",
                             tags={"node": "n1"})["QueueUrl"]
    sqs.set_queue_attributes(QueueUrl=queue, Attributes={"VisibilityTimeout": "77"})
    sqs.tag_queue(QueueUrl=queue, Tags={"cluster": "c1"})


def test_every_kind_of_change_survives_a_crash(stacks, tmp_path):
    first = stacks.boot()
    make_every_kind_of_change(first, tmp_path)
    before = first.state_now()
    first.crash()

    second = stacks.boot()

    assert second.recovery.notes == []
    assert second.recovery.replayed >= 20
    assert second.state_now() == before
    body = second.endpoint.client("s3").get_object(
        Bucket=second.table("DIT4C_STORAGE_BUCKET"), Key="big")
    assert body["Body"].read() == (tmp_path / "big").read_bytes()
    assert body["Metadata"] == {"size": "6M"}


def test_reads_and_refused_writes_are_not_journalled(stacks):
    booted = stacks.boot()
    dynamodb = booted.endpoint.client("dynamodb")
    users = booted.table("DIT4C_USERS_TABLE")
    dynamodb.put_item(TableName=users, Item={"username": {"S": "ann"}})
    dynamodb.get_item(TableName=users, Key={"username": {"S": "ann"}})
    dynamodb.scan(TableName=users)
    with pytest.raises(ClientError, match="ConditionalCheckFailed"):
        dynamodb.put_item(TableName=users, Item={"username": {"S": "ann"}},
                          ConditionExpression="attribute_not_exists(username)")
    sqs = booted.endpoint.client("sqs")
    queue = sqs.get_queue_url(QueueName="durable-EventsQueue")["QueueUrl"]
    sqs.send_message(QueueUrl=queue, MessageBody="not state a snapshot holds")
    booted.crash()
    assert len(booted.journal.read(booted.journal.segment).records) == 1


def test_writes_racing_compactions_are_all_kept(stacks):
    """Four writers each add to a counter of their own and keep what was acknowledged, while
    compactions run back to back: after a crash every acknowledged addition is there."""
    booted = stacks.boot()
    dynamodb = booted.endpoint.client("dynamodb")
    users = booted.table("DIT4C_USERS_TABLE")
    acknowledged = dict.fromkeys(range(4), 0)
    done = threading.Event()

    def write(writer: int) -> None:
        for _ in range(25):
            dynamodb.update_item(
                TableName=users, Key={"username": {"S": f"w{writer}"}},
                UpdateExpression="ADD n :one", ExpressionAttributeValues={":one": {"N": "1"}})
            acknowledged[writer] += 1

    def compact() -> None:
        while not done.is_set():
            booted.state.compact()

    compactor = threading.Thread(target=compact)
    compactor.start()
    writers = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for thread in writers:
        thread.start()
    for thread in writers:
        thread.join(120)
    done.set()
    compactor.join(60)
    booted.crash()

    second = stacks.boot()
    items = second.endpoint.client("dynamodb").scan(TableName=second.table("DIT4C_USERS_TABLE"))
    counts = {int(i["username"]["S"][1:]): int(i["n"]["N"]) for i in items["Items"]}
    assert counts == acknowledged == dict.fromkeys(range(4), 25)
    assert len(second.journal.segments()) <= 3  # compacted: only what the snapshots need


def test_a_damaged_journal_is_replayed_up_to_its_last_good_record(stacks):
    first = stacks.boot()
    dynamodb = first.endpoint.client("dynamodb")
    users = first.table("DIT4C_USERS_TABLE")
    for name in ("ann", "bob", "cy"):
        dynamodb.put_item(TableName=users, Item={"username": {"S": name}})
    first.crash()
    segment = first.journal.path(first.journal.segment)
    data = bytearray(segment.read_bytes())
    second_record = data.index(b'"bob"')
    data[second_record] ^= 0xFF  # bob's record fails its checksum
    segment.write_bytes(bytes(data))

    second = stacks.boot()

    (note,) = second.recovery.notes
    assert f"{segment} is damaged at byte" in note
    assert "a record fails its checksum" in note
    (aside,) = segment.parent.glob(f"{segment.name}.damaged-*")
    assert str(aside) in note
    assert b"cy" in aside.read_bytes()
    items = second.endpoint.client("dynamodb").scan(TableName=second.table("DIT4C_USERS_TABLE"))
    assert [i["username"]["S"] for i in items["Items"]] == ["ann"]
    # ... and the stack goes on: new writes are journalled and survive the next crash.
    second.endpoint.client("dynamodb").put_item(TableName=second.table("DIT4C_USERS_TABLE"),
                                                Item={"username": {"S": "dee"}})
    second.crash()
    third = stacks.boot()
    items = third.endpoint.client("dynamodb").scan(TableName=third.table("DIT4C_USERS_TABLE"))
    assert sorted(i["username"]["S"] for i in items["Items"]) == ["ann", "dee"]
    assert third.recovery.notes == []


class FullDisk(Journal):
    """A journal on a disk that just filled up."""

    full = False

    def append(self, payload: bytes) -> int:
        if self.full:
            raise JournalError(f"cannot append to {self.path(self.segment)}: "
                               "[Errno 28] No space left on device")
        return super().append(payload)


def test_a_change_that_cannot_be_journalled_is_refused_and_so_is_every_later_one(stacks, tmp_path):
    journal = FullDisk(tmp_path / "aws" / "journal")
    booted = stacks.boot(journal)
    dynamodb = booted.endpoint.client("dynamodb")
    users = booted.table("DIT4C_USERS_TABLE")
    dynamodb.put_item(TableName=users, Item={"username": {"S": "ann"}})
    journal.full = True
    with pytest.raises(ClientError, match="cannot save its state"):
        dynamodb.put_item(TableName=users, Item={"username": {"S": "bob"}})
    assert booted.state.failure is not None
    assert "No space left on device" in booted.state.failure
    assert "PutItem" in booted.state.failure
    journal.full = False
    with pytest.raises(ClientError, match="cannot save its state"):
        dynamodb.put_item(TableName=users, Item={"username": {"S": "cy"}})
    assert dynamodb.get_item(TableName=users, Key={"username": {"S": "ann"}})["Item"]


def test_the_compactor_compacts_a_journal_grown_past_its_limit(stacks):
    booted = stacks.boot()
    dynamodb = booted.endpoint.client("dynamodb")
    users = booted.table("DIT4C_USERS_TABLE")
    start = booted.journal.segment
    compactor = Compactor(booted.state, interval=0.05, limit=2000)
    compactor.start()
    try:
        dynamodb.put_item(TableName=users, Item={"username": {"S": "small"}})
        for n in range(3):
            dynamodb.put_item(TableName=users, Item={"username": {"S": f"big{n}"},
                                                     "pad": {"S": "x" * 1000}})
        deadline = threading.Event()
        for _ in range(600):
            if booted.journal.segment > start:
                break
            deadline.wait(0.05)
    finally:
        compactor.stop()
    assert booted.journal.segment > start, "no compaction ran"
