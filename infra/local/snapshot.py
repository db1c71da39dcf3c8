"""Saving the local stack's AWS state to the data directory, and restoring it at start.

moto keeps everything in memory, so :class:`Snapshotter` copies out what must survive a restart
of ``make run`` and puts it back into a fresh moto:

- every item of every DynamoDB table of the stack (keyed by the template's logical id, so the
  physical names may change);
- SSM parameters (the signing keys live there), except AWS's own ``/aws/`` ones;
- the objects of the stack's S3 buckets;
- the SQS queues made at run time whose names start with the node queue prefix (per-node command
  queues): name, attributes and tags. Their *messages* are not kept: a command that was waiting
  when the stack stopped is lost, and the control plane's reaper fails the transition it belonged
  to, as it would for a node that never answered.

Layout under the snapshot directory::

    snapshot.json        the manifest: tables, parameters, queues, object index (written atomically)
    blobs/<sha256>       S3 object bodies, content-addressed

A table or bucket in the snapshot that the template no longer has is kept in the next snapshot
(and reported), never dropped: bad input loses nothing. A snapshot that cannot be read is a
:class:`SnapshotError` and the stack refuses to start rather than overwrite it.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from botocore.exceptions import BotoCoreError, ClientError

from infra.local.aws import AwsEndpoint
from infra.local.errors import SnapshotError
from infra.local.provision import Stack

log = logging.getLogger("dit4c.local.snapshot")

SNAPSHOT_VERSION: Final = 1
MANIFEST: Final = "snapshot.json"

# Queue attributes that SQS computes; the rest is what a queue was created with.
_COMPUTED_QUEUE_ATTRIBUTES: Final = frozenset({
    "QueueArn",
    "ApproximateNumberOfMessages",
    "ApproximateNumberOfMessagesNotVisible",
    "ApproximateNumberOfMessagesDelayed",
    "CreatedTimestamp",
    "LastModifiedTimestamp",
})
_BATCH_WRITE_LIMIT: Final = 25


@dataclass(frozen=True)
class Summary:
    """What one save or restore moved."""

    items: int = 0
    tables: int = 0
    parameters: int = 0
    objects: int = 0
    queues: int = 0

    def __str__(self) -> str:
        return (
            f"{self.items} items in {self.tables} tables, {self.parameters} parameters, "
            f"{self.objects} objects, {self.queues} node queues"
        )


class Snapshotter:
    """Saves the stack's AWS state to ``directory`` and restores it; see the module docstring.

    ``save`` may be called from several threads (a timer and the shutdown path); saves are
    serialised. Call ``restore`` once, before anything writes to the stack.
    """

    def __init__(
        self, endpoint: AwsEndpoint, stack: Stack, directory: Path, node_queue_prefix: str
    ) -> None:
        self._endpoint = endpoint
        self._stack = stack
        self._directory = directory
        self._blobs = directory / "blobs"
        self._node_queue_prefix = node_queue_prefix
        self._lock = threading.Lock()
        # Sections of the last restored snapshot that the current template has no place for.
        self._orphan_tables: dict[str, Any] = {}
        self._orphan_buckets: dict[str, Any] = {}

    @property
    def manifest_path(self) -> Path:
        return self._directory / MANIFEST

    # -- restore ---------------------------------------------------------------------------------

    def restore(self) -> Summary:
        """Put a saved snapshot back into the (fresh) stack; no snapshot: nothing to do."""
        manifest = self._read_manifest()
        if manifest is None:
            return Summary()
        try:
            return self._restore(manifest)
        except (ClientError, BotoCoreError, KeyError, TypeError, ValueError) as exc:
            raise SnapshotError(
                f"cannot restore {self.manifest_path}: {exc}; the file is left as it is"
            ) from exc

    def _read_manifest(self) -> dict[str, Any] | None:
        try:
            text = self.manifest_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise SnapshotError(f"cannot read {self.manifest_path}: {exc}") from exc
        try:
            manifest = json.loads(text)
        except ValueError as exc:
            raise SnapshotError(f"{self.manifest_path} is not valid JSON: {exc}") from exc
        if not isinstance(manifest, dict) or manifest.get("version") != SNAPSHOT_VERSION:
            raise SnapshotError(
                f"{self.manifest_path}: unknown snapshot version "
                f"{manifest.get('version') if isinstance(manifest, dict) else manifest!r}"
            )
        return manifest

    def _restore(self, manifest: dict[str, Any]) -> Summary:
        dynamodb = self._endpoint.client("dynamodb")
        tables = self._tables()
        items = restored_tables = 0
        for logical_id, saved in manifest.get("tables", {}).items():
            if logical_id not in tables:
                log.warning(
                    "snapshot has table %s, which template.yaml no longer has: kept in the "
                    "snapshot, not restored", logical_id,
                )
                self._orphan_tables[logical_id] = saved
                continue
            decoded = [_decode_item(item) for item in saved]
            for chunk in _chunks(decoded, _BATCH_WRITE_LIMIT):
                _batch_put(dynamodb, tables[logical_id], chunk)
            items += len(decoded)
            restored_tables += 1

        ssm = self._endpoint.client("ssm")
        parameters = manifest.get("parameters", [])
        for parameter in parameters:
            request = {k: parameter[k] for k in ("Name", "Type", "Value")}
            if parameter.get("Description"):
                request["Description"] = parameter["Description"]
            ssm.put_parameter(**request, Overwrite=True)

        s3 = self._endpoint.client("s3")
        buckets = self._buckets()
        objects = 0
        for logical_id, saved_objects in manifest.get("objects", {}).items():
            if logical_id not in buckets:
                log.warning(
                    "snapshot has bucket %s, which template.yaml no longer has: kept in the "
                    "snapshot, not restored", logical_id,
                )
                self._orphan_buckets[logical_id] = saved_objects
                continue
            for entry in saved_objects:
                body = self._read_blob(entry["sha256"])
                s3.put_object(
                    Bucket=buckets[logical_id], Key=entry["key"], Body=body,
                    ContentType=entry.get("content_type") or "binary/octet-stream",
                    Metadata=entry.get("metadata") or {},
                )
                objects += 1

        sqs = self._endpoint.client("sqs")
        queues = manifest.get("queues", [])
        for queue in queues:
            try:
                sqs.get_queue_url(QueueName=queue["name"])
            except sqs.exceptions.QueueDoesNotExist:
                request = {"QueueName": queue["name"], "Attributes": queue["attributes"]}
                if queue.get("tags"):
                    request["tags"] = queue["tags"]
                sqs.create_queue(**request)
        summary = Summary(items, restored_tables, len(parameters), objects, len(queues))
        log.info("restored %s from %s", summary, self.manifest_path)
        return summary

    def _read_blob(self, digest: str) -> bytes:
        path = self._blobs / digest
        try:
            body = path.read_bytes()
        except OSError as exc:
            raise SnapshotError(f"snapshot object {path} is missing: {exc}") from exc
        if hashlib.sha256(body).hexdigest() != digest:
            raise SnapshotError(f"snapshot object {path} is damaged (checksum differs)")
        return body

    # -- save ------------------------------------------------------------------------------------

    def save(self) -> Summary:
        """Write the current state atomically (manifest last); returns what was saved."""
        with self._lock:
            try:
                return self._save()
            except (ClientError, BotoCoreError) as exc:
                raise SnapshotError(f"cannot read the stack's state to save it: {exc}") from exc

    def _save(self) -> Summary:
        self._blobs.mkdir(parents=True, exist_ok=True)
        dynamodb = self._endpoint.client("dynamodb")
        tables: dict[str, Any] = dict(self._orphan_tables)
        items = 0
        for logical_id, name in self._tables().items():
            saved = [
                _encode_item(item)
                for page in dynamodb.get_paginator("scan").paginate(TableName=name)
                for item in page["Items"]
            ]
            tables[logical_id] = saved
            items += len(saved)

        parameters = list(self._parameters())

        s3 = self._endpoint.client("s3")
        objects: dict[str, Any] = dict(self._orphan_buckets)
        object_count = 0
        for logical_id, bucket in self._buckets().items():
            entries = []
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
                for listed in page.get("Contents", []):
                    response = s3.get_object(Bucket=bucket, Key=listed["Key"])
                    body = response["Body"].read()
                    digest = self._write_blob(body)
                    entries.append({
                        "key": listed["Key"],
                        "sha256": digest,
                        "content_type": response.get("ContentType"),
                        "metadata": response.get("Metadata") or {},
                    })
            objects[logical_id] = entries
            object_count += len(entries)

        queues = list(self._node_queues())
        manifest = {
            "version": SNAPSHOT_VERSION,
            "saved_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "stack": self._stack.name,
            "tables": tables,
            "parameters": parameters,
            "objects": objects,
            "queues": queues,
        }
        _write_atomically(self.manifest_path, json.dumps(manifest, indent=1).encode())
        self._collect_garbage(objects)
        return Summary(items, len(self._tables()), len(parameters), object_count, len(queues))

    def _parameters(self) -> Iterator[dict[str, str]]:
        ssm = self._endpoint.client("ssm")
        described = [
            parameter
            for page in ssm.get_paginator("describe_parameters").paginate()
            for parameter in page["Parameters"]
            if not parameter["Name"].startswith("/aws/")
        ]
        for chunk in _chunks(described, 10):
            values = ssm.get_parameters(Names=[p["Name"] for p in chunk], WithDecryption=True)
            by_name = {p["Name"]: p for p in values["Parameters"]}
            for parameter in chunk:
                if parameter["Name"] not in by_name:
                    continue  # deleted between the two calls
                yield {
                    "Name": parameter["Name"],
                    "Type": parameter["Type"],
                    "Value": by_name[parameter["Name"]]["Value"],
                    "Description": parameter.get("Description", ""),
                }

    def _node_queues(self) -> Iterator[dict[str, Any]]:
        sqs = self._endpoint.client("sqs")
        pages = sqs.get_paginator("list_queues").paginate(QueueNamePrefix=self._node_queue_prefix)
        for page in pages:
            for url in page.get("QueueUrls", []):
                try:
                    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])
                    tags = sqs.list_queue_tags(QueueUrl=url).get("Tags", {})
                except sqs.exceptions.QueueDoesNotExist:
                    continue  # deleted while listing
                yield {
                    "name": url.rstrip("/").rsplit("/", 1)[1],
                    "attributes": {
                        k: v for k, v in attributes["Attributes"].items()
                        if k not in _COMPUTED_QUEUE_ATTRIBUTES
                    },
                    "tags": tags,
                }

    def _write_blob(self, body: bytes) -> str:
        digest = hashlib.sha256(body).hexdigest()
        path = self._blobs / digest
        if not path.exists():
            _write_atomically(path, body)
        return digest

    def _collect_garbage(self, objects: dict[str, Any]) -> None:
        referenced = {entry["sha256"] for entries in objects.values() for entry in entries}
        for path in self._blobs.iterdir():
            if path.name not in referenced and not path.name.endswith(".tmp"):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()

    def _tables(self) -> dict[str, str]:
        return {r.logical_id: r.ref for r in self._stack.of_type("AWS::DynamoDB::Table")}

    def _buckets(self) -> dict[str, str]:
        return {r.logical_id: r.ref for r in self._stack.of_type("AWS::S3::Bucket")}


class PeriodicSnapshots:
    """Calls ``snapshotter.save()`` every ``interval`` seconds in a thread until ``stop()``.

    A failed save is logged (with the reason) and retried at the next tick: a periodic save is a
    safety net, the one at shutdown is the one that must succeed.
    """

    def __init__(
        self, snapshotter: Snapshotter, interval: float, stopping: threading.Event | None = None
    ) -> None:
        self._snapshotter = snapshotter
        self._interval = interval
        self._stopping = stopping or threading.Event()
        self._thread = threading.Thread(target=self._run, name="snapshots", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stopping.wait(self._interval):
            try:
                summary = self._snapshotter.save()
            except Exception:
                log.exception("periodic snapshot failed; retrying in %.0f s", self._interval)
            else:
                log.debug("periodic snapshot: %s", summary)

    def stop(self) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)


# -- helpers ---------------------------------------------------------------------------------


def _chunks(values: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(values), size):
        yield values[start:start + size]


def _batch_put(dynamodb: Any, table: str, items: list[dict[str, Any]]) -> None:
    pending: dict[str, Any] = {table: [{"PutRequest": {"Item": item}} for item in items]}
    for _ in range(10):
        response = dynamodb.batch_write_item(RequestItems=pending)
        pending = response.get("UnprocessedItems") or {}
        if not pending:
            return
    raise SnapshotError(f"table {table}: items still unprocessed after 10 batch writes")


def _encode_item(item: dict[str, Any]) -> dict[str, Any]:
    """A DynamoDB item (low-level AttributeValues) as JSON: binary (B, BS) as base64 text."""
    return {name: _encode_value(value) for name, value in item.items()}


def _encode_value(value: dict[str, Any]) -> dict[str, Any]:
    (kind, inner), = value.items()
    if kind == "B":
        return {kind: base64.b64encode(inner).decode()}
    if kind == "BS":
        return {kind: [base64.b64encode(v).decode() for v in inner]}
    if kind == "M":
        return {kind: _encode_item(inner)}
    if kind == "L":
        return {kind: [_encode_value(v) for v in inner]}
    return value


def _decode_item(item: dict[str, Any]) -> dict[str, Any]:
    return {name: _decode_value(value) for name, value in item.items()}


def _decode_value(value: dict[str, Any]) -> dict[str, Any]:
    (kind, inner), = value.items()
    if kind == "B":
        return {kind: base64.b64decode(inner)}
    if kind == "BS":
        return {kind: [base64.b64decode(v) for v in inner]}
    if kind == "M":
        return {kind: _decode_item(inner)}
    if kind == "L":
        return {kind: [_decode_value(v) for v in inner]}
    return value


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
