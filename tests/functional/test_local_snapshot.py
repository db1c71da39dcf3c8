"""The local stack's AWS state survives a restart: save to the data directory, restore into moto.

moto's state is per process, so a "fresh" moto is simulated by a second stack (a new uuid stack
name: the snapshot is keyed by the template's logical ids) and by deleting the global things
(SSM parameters, node queues) before restoring.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.local.aws import AwsEndpoint
from infra.local.errors import SnapshotError
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

ITEM = {
    "username": {"S": "alice"},
    "B": {"S": "an attribute that happens to be called B"},
    "salt": {"B": b"\x00\xffbinary"},
    "keys": {"BS": [b"k1", b"\x01k2"]},
    "profile": {"M": {"avatar": {"B": b"\x89PNG"}, "tags": {"L": [{"S": "x"}, {"N": "3"}]}}},
    "admin": {"BOOL": True},
    "nothing": {"NULL": True},
    "roles": {"SS": ["a", "b"]},
}


@pytest.fixture(scope="module")
def endpoint() -> Iterator[AwsEndpoint]:
    server = MotoServer()
    yield server.start()
    server.stop()


def new_stack(endpoint: AwsEndpoint, template: Template | None = None) -> Stack:
    name = f"t-{uuid.uuid4().hex[:10]}"
    return Provisioner(endpoint, name).provision(template or Template.load(), PARAMETERS)


def snapshotter(endpoint: AwsEndpoint, stack: Stack, directory: Path) -> Snapshotter:
    return Snapshotter(endpoint, stack, directory, stack.environment["DIT4C_NODE_QUEUE_PREFIX"])


def test_tables_parameters_objects_and_node_queues_round_trip(endpoint, tmp_path):
    first = new_stack(endpoint)
    dynamodb, ssm = endpoint.client("dynamodb"), endpoint.client("ssm")
    s3, sqs = endpoint.client("s3"), endpoint.client("sqs")
    dynamodb.put_item(TableName=first.environment["DIT4C_USERS_TABLE"], Item=ITEM)
    for n in range(60):  # more than one batch write
        dynamodb.put_item(
            TableName=first.environment["DIT4C_TOKENS_TABLE"],
            Item={"token_key": {"S": f"t{n}"}, "expires_at": {"N": str(1000 + n)}},
        )
    parameter = first.environment["DIT4C_SIGNING_KEY_PARAMETER"]
    ssm.put_parameter(Name=parameter, Value='{"keys": []}', Type="SecureString")
    bucket = first.environment["DIT4C_STORAGE_BUCKET"]
    s3.put_object(
        Bucket=bucket, Key="users/alice/notes.txt", Body=b"hello\x00", ContentType="text/plain",
        Metadata={"owner": "alice"},
    )
    queue_name = first.environment["DIT4C_NODE_QUEUE_PREFIX"] + "n1"
    sqs.create_queue(
        QueueName=queue_name, Attributes={"VisibilityTimeout": "77"}, tags={"node": "n1"}
    )

    saved = snapshotter(endpoint, first, tmp_path).save()
    assert (saved.items, saved.parameters, saved.objects, saved.queues) == (61, 1, 1, 1)

    # A fresh stack: new tables and bucket; the global parameter and queue are gone.
    ssm.delete_parameter(Name=parameter)
    sqs.delete_queue(QueueUrl=sqs.get_queue_url(QueueName=queue_name)["QueueUrl"])
    second = new_stack(endpoint)

    restored = snapshotter(endpoint, second, tmp_path).restore()

    assert restored.summary == saved
    assert (restored.source, restored.notes) == (tmp_path / "snapshot.json", ())
    item = dynamodb.get_item(
        TableName=second.environment["DIT4C_USERS_TABLE"], Key={"username": {"S": "alice"}}
    )["Item"]
    assert item == ITEM
    tokens = dynamodb.scan(TableName=second.environment["DIT4C_TOKENS_TABLE"])["Items"]
    assert len(tokens) == 60
    value = ssm.get_parameter(Name=parameter, WithDecryption=True)["Parameter"]
    assert (value["Value"], value["Type"]) == ('{"keys": []}', "SecureString")
    copy = s3.get_object(Bucket=second.environment["DIT4C_STORAGE_BUCKET"],
                         Key="users/alice/notes.txt")
    assert copy["Body"].read() == b"hello\x00"
    assert (copy["ContentType"], copy["Metadata"]) == ("text/plain", {"owner": "alice"})
    url = sqs.get_queue_url(QueueName=queue_name)["QueueUrl"]
    assert sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["VisibilityTimeout"])[
        "Attributes"] == {"VisibilityTimeout": "77"}
    assert sqs.list_queue_tags(QueueUrl=url)["Tags"] == {"node": "n1"}
    ssm.delete_parameter(Name=parameter)


def test_no_snapshot_restores_nothing(endpoint, tmp_path):
    restored = snapshotter(endpoint, new_stack(endpoint), tmp_path).restore()
    assert str(restored.summary).startswith("0 items")
    assert (restored.source, restored.journal_from) == (None, 0)


def test_a_table_the_template_lost_is_kept_not_dropped(endpoint, tmp_path):
    first = new_stack(endpoint)
    endpoint.client("dynamodb").put_item(
        TableName=first.environment["DIT4C_SHARES_TABLE"],
        Item={"resource": {"S": "image/1"}, "grantee": {"S": "bob"}},
    )
    snapshotter(endpoint, first, tmp_path).save()

    text = Path("template.yaml").read_text()
    text = text.replace("        DIT4C_SHARES_TABLE: !Ref SharesTable\n", "")
    smaller = Template.loads(
        text[: text.index("  SharesTable:\n")] + text[text.index("  ClustersTable:\n") :]
    )
    second = new_stack(endpoint, smaller)
    later = snapshotter(endpoint, second, tmp_path)
    later.restore()
    later.save()

    manifest = json.loads((tmp_path / "snapshot.json").read_text())
    assert manifest["tables"]["SharesTable"] == [
        {"resource": {"S": "image/1"}, "grantee": {"S": "bob"}}
    ]


@pytest.mark.parametrize(
    ("content", "message"),
    [("{not json", "not valid JSON"), ('{"version": 99}', "unknown snapshot version 99")],
)
def test_an_unreadable_snapshot_with_nothing_to_fall_back_on_is_refused_and_left_alone(
    endpoint, tmp_path, content, message
):
    (tmp_path / "snapshot.json").write_text(content)
    with pytest.raises(SnapshotError, match=message) as raised:
        snapshotter(endpoint, new_stack(endpoint), tmp_path).restore()
    assert "no good snapshot is left" in str(raised.value)
    assert (tmp_path / "snapshot.json").read_text() == content


def test_a_damaged_snapshot_is_set_aside_and_the_previous_one_restored(endpoint, tmp_path):
    first = new_stack(endpoint)
    dynamodb = endpoint.client("dynamodb")
    table = first.environment["DIT4C_USERS_TABLE"]
    dynamodb.put_item(TableName=table, Item={"username": {"S": "old"}})
    saver = snapshotter(endpoint, first, tmp_path)
    saver.save(journal_from=3)
    dynamodb.put_item(TableName=table, Item={"username": {"S": "new"}})
    saver.save(journal_from=5)
    manifest = tmp_path / "snapshot.json"
    torn = manifest.read_bytes()[:100]
    manifest.write_bytes(torn)

    second = new_stack(endpoint)
    restored = snapshotter(endpoint, second, tmp_path).restore()

    assert (restored.source, restored.journal_from) == (tmp_path / "snapshot.prev.json", 3)
    (note,) = restored.notes
    (aside,) = tmp_path.glob("snapshot.json.damaged-*")
    assert f"{manifest} is not valid JSON" in note
    assert f"moved to {aside}" in note
    assert "restored from" in note and "journal from segment 3" in note
    assert aside.read_bytes() == torn
    items = dynamodb.scan(TableName=second.environment["DIT4C_USERS_TABLE"])["Items"]
    assert items == [{"username": {"S": "old"}}]


def test_a_save_cut_between_its_two_renames_restores_the_previous_one(endpoint, tmp_path):
    stack = new_stack(endpoint)
    saver = snapshotter(endpoint, stack, tmp_path)
    saver.save(journal_from=1)
    saver.save(journal_from=2)
    (tmp_path / "snapshot.json").unlink()  # as if killed after the first rename

    restored = snapshotter(endpoint, new_stack(endpoint), tmp_path).restore()

    assert (restored.source, restored.journal_from, restored.notes) == (
        tmp_path / "snapshot.prev.json", 1, ())


def test_a_damaged_object_is_refused(endpoint, tmp_path):
    stack = new_stack(endpoint)
    endpoint.client("s3").put_object(
        Bucket=stack.environment["DIT4C_STORAGE_BUCKET"], Key="k", Body=b"original"
    )
    snapshotter(endpoint, stack, tmp_path).save()
    (blob,) = (tmp_path / "blobs").iterdir()
    blob.write_bytes(b"tampered")
    with pytest.raises(SnapshotError, match="damaged"):
        snapshotter(endpoint, new_stack(endpoint), tmp_path).restore()


def test_objects_neither_snapshot_names_are_removed_from_the_blob_store(endpoint, tmp_path):
    stack = new_stack(endpoint)
    s3 = endpoint.client("s3")
    bucket = stack.environment["DIT4C_STORAGE_BUCKET"]
    s3.put_object(Bucket=bucket, Key="a", Body=b"one")
    saver = snapshotter(endpoint, stack, tmp_path)
    saver.save()
    s3.put_object(Bucket=bucket, Key="a", Body=b"two")
    saver.save()
    blobs = tmp_path / "blobs"
    assert sorted(p.read_bytes() for p in blobs.iterdir()) == [b"one", b"two"]  # prev needs one
    saver.save()
    assert [p.read_bytes() for p in blobs.iterdir()] == [b"two"]
