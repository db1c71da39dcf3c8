"""The storage helper's mirroring (helpers.storage) with real boto3 against moto's S3 server:
initial download, uploads of new and changed files, deletions, unsafe keys, no deletion before
the initial download."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from moto.server import ThreadedMotoServer

from helpers.storage.__main__ import run, settings
from helpers.storage.s3 import S3Store
from helpers.storage.sync import Mirror, StorageError
from protocol.pod import ENV_STORAGE, ENV_STORAGE_SYNC_SECONDS

PREFIX = "users/u1/"
CREDS = {"access_key_id": "testing", "secret_access_key": "testing"}


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3(endpoint: str, unique_name):
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    bucket = unique_name("bucket").lower().replace("_", "-")
    client.create_bucket(Bucket=bucket)
    return client, bucket


def objects(client, bucket: str) -> dict[str, bytes]:
    listed = client.list_objects_v2(Bucket=bucket).get("Contents", [])
    return {o["Key"]: client.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
            for o in listed}


def mirror_of(endpoint: str, bucket: str, root: Path) -> Mirror:
    return Mirror(root, S3Store(bucket=bucket, prefix=PREFIX, credentials=CREDS,
                                endpoint_url=endpoint))


def test_download_then_upload_changes_and_delete_removals(endpoint, s3, tmp_path):
    client, bucket = s3
    client.put_object(Bucket=bucket, Key=PREFIX + "notes.txt", Body=b"hello")
    client.put_object(Bucket=bucket, Key=PREFIX + "deep/er/data.csv", Body=b"1,2")
    client.put_object(Bucket=bucket, Key=PREFIX + "deep/", Body=b"")  # a folder marker
    client.put_object(Bucket=bucket, Key="users/u2/other.txt", Body=b"not ours")
    client.put_object(Bucket=bucket, Key=PREFIX + "../escape.txt", Body=b"evil")
    mirror = mirror_of(endpoint, bucket, tmp_path)

    assert mirror.sync() == (0, 0)  # nothing before the initial download
    assert mirror.download_all() == 2
    assert (tmp_path / "notes.txt").read_bytes() == b"hello"
    assert (tmp_path / "deep/er/data.csv").read_bytes() == b"1,2"
    assert not (tmp_path.parent / "escape.txt").exists()
    assert not (tmp_path / "other.txt").exists()
    assert mirror.sync() == (0, 0)  # what was downloaded is not uploaded back

    (tmp_path / "new.txt").write_bytes(b"new")
    (tmp_path / "notes.txt").write_bytes(b"changed")
    (tmp_path / "deep/er/data.csv").unlink()
    os.symlink("/etc/passwd", tmp_path / "link")
    assert mirror.sync() == (2, 1)
    stored = objects(client, bucket)
    assert stored[PREFIX + "new.txt"] == b"new"
    assert stored[PREFIX + "notes.txt"] == b"changed"
    assert PREFIX + "deep/er/data.csv" not in stored
    assert PREFIX + "link" not in stored
    assert stored["users/u2/other.txt"] == b"not ours"
    assert mirror.sync() == (0, 0)


def test_a_failed_initial_download_deletes_nothing(endpoint, s3, tmp_path):
    client, bucket = s3
    client.put_object(Bucket=bucket, Key=PREFIX + "keep.txt", Body=b"keep")
    broken = Mirror(tmp_path, S3Store(bucket=bucket + "-absent", prefix=PREFIX,
                                      credentials=CREDS, endpoint_url=endpoint))
    with pytest.raises(Exception, match="NoSuchBucket"):
        broken.download_all()
    assert broken.sync() == (0, 0)
    assert PREFIX + "keep.txt" in objects(client, bucket)


def test_unsafe_keys_are_refused(tmp_path):
    mirror = Mirror(tmp_path, store=None)  # type: ignore[arg-type]
    for key in ("../x", "/etc/x", "a//b", "a/./b", ""):
        with pytest.raises(StorageError):
            mirror.local_path(key)
    assert mirror.local_path("a/b") == tmp_path / "a" / "b"


def test_settings_are_checked():
    good = '{"kind": "s3", "bucket": "b", "prefix": "p/", "credentials": {}}'
    assert settings({ENV_STORAGE: good})[1] == 30.0
    assert settings({ENV_STORAGE: good, ENV_STORAGE_SYNC_SECONDS: "2"})[1] == 2.0
    for env, message in [({}, "JSON object"), ({ENV_STORAGE: '{"kind": "gcs"}'}, "kind"),
                         ({ENV_STORAGE: '{"kind": "s3", "bucket": ""}'}, "bucket"),
                         ({ENV_STORAGE: good, ENV_STORAGE_SYNC_SECONDS: "x"}, "seconds")]:
        with pytest.raises(StorageError, match=message):
            settings(env)


def test_the_loop_syncs_every_interval_and_once_more_when_stopped(endpoint, s3, tmp_path):
    client, bucket = s3
    client.put_object(Bucket=bucket, Key=PREFIX + "a.txt", Body=b"a")
    root, ready = tmp_path / "mnt", tmp_path / "run" / "ready"
    root.mkdir()
    stop = threading.Event()
    loop = threading.Thread(target=run, args=(mirror_of(endpoint, bucket, root), 0.2, stop,
                                              ready))
    loop.start()
    try:
        wait_for(ready.exists)
        assert (root / "a.txt").read_bytes() == b"a"
        (root / "b.txt").write_bytes(b"b")
        wait_for(lambda: PREFIX + "b.txt" in objects(client, bucket))
    finally:
        (root / "a.txt").unlink()
        stop.set()
        loop.join(timeout=30)
    assert not loop.is_alive()
    assert set(objects(client, bucket)) == {PREFIX + "b.txt"}


def wait_for(condition, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
