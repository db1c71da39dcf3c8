"""Saving the local stack's AWS state to the data directory, and restoring it at start.

moto keeps everything in memory, so :class:`Snapshotter` copies out what must survive a restart
of ``make run`` and puts it back into a fresh moto:

- every item of every DynamoDB table of the stack (keyed by the template's logical id, so the
  physical names may change);
- SSM parameters (the signing keys live there), except AWS's own ``/aws/`` ones;
- the objects of the stack's S3 buckets;
- the SQS queues made at run time whose names start with the node queue prefix (per-node command
  queues): name, attributes and tags. Their *messages* are not kept: a command that was waiting
  when the stack stopped is lost, and the control plane's reaper repairs the transition it
  belonged to, as it would for a node that never answered.

Changes between snapshots are in the journal (:mod:`infra.local.durable`), which holds exactly
the same kinds of state.

Layout under the snapshot directory::

    snapshot.json        the manifest: tables, parameters, queues, object index, and the first
                         journal segment it does not hold (``journal_from``)
    snapshot.prev.json   the manifest before it, kept as a fallback
    blobs/<sha256>       S3 object bodies, content-addressed (those of both manifests)

A save is :meth:`Snapshotter.capture` (reading the state; the caller keeps writers out while it
runs, so the snapshot is one moment) then :meth:`Snapshotter.write`: bodies first, then the
manifest atomically, the old one becoming ``snapshot.prev.json``.

A table or bucket in the snapshot that the template no longer has is kept in the next snapshot
(and reported), never dropped: bad input loses nothing. A manifest that cannot be read, or
whose objects are missing or damaged, is moved aside (``snapshot.json.damaged-<time>``) and the
previous one is used, with the journal from where that one ends, and :class:`Restored` says so.
When no good manifest is left it is a :class:`SnapshotError` and the stack refuses to start,
leaving the files as they are: it never starts empty in their place.
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
from infra.local.files import set_aside, sync_directory, write_atomically
from infra.local.provision import Stack

log = logging.getLogger("dit4c.local.snapshot")

SNAPSHOT_VERSION: Final = 1
MANIFEST: Final = "snapshot.json"
PREVIOUS: Final = "snapshot.prev.json"

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


@dataclass(frozen=True)
class Restored:
    """What :meth:`Snapshotter.restore` did."""

    summary: Summary
    journal_from: int
    """The first journal segment the restored snapshot does not hold: replay from there."""
    source: Path | None
    """The manifest restored (None: there was none, a first start)."""
    notes: tuple[str, ...] = ()
    """Damage found and what was done about it, one sentence each, for the terminal."""


@dataclass
class Capture:
    """The stack's state at one moment, read by :meth:`Snapshotter.capture`, not yet on disk."""

    manifest: dict[str, Any]
    bodies: dict[str, bytes]
    summary: Summary


@dataclass
class _Loaded:
    """A manifest read and checked, with the bodies of its objects."""

    path: Path
    manifest: dict[str, Any]
    bodies: dict[str, bytes]

    @property
    def journal_from(self) -> int:
        return int(self.manifest.get("journal_from", 0))


class Snapshotter:
    """Saves the stack's AWS state to ``directory`` and restores it; see the module docstring.

    Saves are serialised. Call ``restore`` once, before anything writes to the stack.
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
        # The manifest on disk that the next write makes the previous one: its objects and
        # journal stay until the write after that.
        self._kept_blobs: set[str] = set()
        self._kept_journal_from = 0

    @property
    def manifest_path(self) -> Path:
        return self._directory / MANIFEST

    @property
    def previous_path(self) -> Path:
        return self._directory / PREVIOUS

    # -- restore ---------------------------------------------------------------------------------

    def restore(self) -> Restored:
        """Put the newest good snapshot back into the (fresh) stack; see the module docstring."""
        damaged: list[tuple[Path, SnapshotError]] = []
        for path in (self.manifest_path, self.previous_path):
            try:
                loaded = self._load(path)
            except SnapshotError as exc:
                damaged.append((path, exc))
                continue
            if loaded is None:
                continue
            notes = []
            for bad, reason in damaged:
                aside = set_aside(bad)
                notes.append(f"{reason}: moved to {aside}; restored from {path} and the journal "
                             f"from segment {loaded.journal_from} instead")
            try:
                summary = self._apply(loaded)
            except (ClientError, BotoCoreError, KeyError, TypeError, ValueError) as exc:
                raise SnapshotError(
                    f"cannot restore {path}: {exc}; the file is left as it is"
                ) from exc
            self._kept_blobs = set(loaded.bodies)
            self._kept_journal_from = loaded.journal_from
            return Restored(summary, loaded.journal_from, path, tuple(notes))
        if damaged:
            reasons = "; ".join(str(exc) for _, exc in damaged)
            raise SnapshotError(
                f"{reasons}; no good snapshot is left to restore from, so the stack does not "
                "start (the files are left as they are; move them aside to start empty)"
            )
        return Restored(Summary(), 0, None)

    def _load(self, path: Path) -> _Loaded | None:
        """The manifest at ``path`` with its objects, checked; None when there is no file."""
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            raise SnapshotError(f"cannot read {path}: {exc}") from exc
        try:
            manifest = json.loads(text)
        except ValueError as exc:
            raise SnapshotError(f"{path} is not valid JSON: {exc}") from exc
        if not isinstance(manifest, dict) or manifest.get("version") != SNAPSHOT_VERSION:
            raise SnapshotError(
                f"{path}: unknown snapshot version "
                f"{manifest.get('version') if isinstance(manifest, dict) else manifest!r}"
            )
        try:
            digests = {entry["sha256"] for entries in manifest.get("objects", {}).values()
                       for entry in entries}
            int(manifest.get("journal_from", 0))
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise SnapshotError(f"{path} is damaged: {exc!r}") from exc
        bodies = {digest: self._read_blob(digest, path) for digest in digests}
        return _Loaded(path, manifest, bodies)

    def _apply(self, loaded: _Loaded) -> Summary:
        manifest = loaded.manifest
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
                s3.put_object(
                    Bucket=buckets[logical_id], Key=entry["key"],
                    Body=loaded.bodies[entry["sha256"]],
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
        log.info("restored %s from %s", summary, loaded.path)
        return summary

    def _read_blob(self, digest: str, manifest: Path) -> bytes:
        path = self._blobs / digest
        try:
            body = path.read_bytes()
        except OSError as exc:
            raise SnapshotError(
                f"{manifest} names object {path}, which cannot be read: {exc}"
            ) from exc
        if hashlib.sha256(body).hexdigest() != digest:
            raise SnapshotError(f"{manifest} names object {path}, which is damaged "
                                "(checksum differs)")
        return body

    # -- save ------------------------------------------------------------------------------------

    def save(self, journal_from: int = 0) -> Summary:
        """Capture and write at once (nothing else may write meanwhile); see :meth:`write`."""
        summary, _ = self.write(self.capture(), journal_from)
        return summary

    def capture(self) -> Capture:
        """Read the whole state to save; writers must be kept out until it returns."""
        try:
            return self._capture()
        except (ClientError, BotoCoreError) as exc:
            raise SnapshotError(f"cannot read the stack's state to save it: {exc}") from exc

    def write(self, capture: Capture, journal_from: int) -> tuple[Summary, int]:
        """Put ``capture`` on disk as the snapshot that holds the journal up to segment
        ``journal_from`` (excluded). Returns what was saved and the first journal segment still
        needed by the manifest kept as the previous one: the ones before it may go."""
        with self._lock:
            self._blobs.mkdir(parents=True, exist_ok=True)
            for digest, body in capture.bodies.items():
                path = self._blobs / digest
                if not path.exists():
                    write_atomically(path, body)
            sync_directory(self._blobs)
            manifest = {**capture.manifest, "journal_from": journal_from,
                        "saved_at": datetime.now(UTC).isoformat(timespec="seconds")}
            tmp = self.manifest_path.with_name(MANIFEST + ".tmp")
            write_atomically(tmp, json.dumps(manifest, indent=1).encode())
            if self.manifest_path.exists():
                os.replace(self.manifest_path, self.previous_path)
            os.replace(tmp, self.manifest_path)
            sync_directory(self._directory)
            keep = set(capture.bodies) | self._kept_blobs
            self._collect_garbage(keep)
            previous_from = self._kept_journal_from
            self._kept_blobs = set(capture.bodies)
            self._kept_journal_from = journal_from
            return capture.summary, previous_from

    def _capture(self) -> Capture:
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
        bodies: dict[str, bytes] = {}
        object_count = 0
        for logical_id, bucket in self._buckets().items():
            entries = []
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
                for listed in page.get("Contents", []):
                    response = s3.get_object(Bucket=bucket, Key=listed["Key"])
                    body = response["Body"].read()
                    digest = hashlib.sha256(body).hexdigest()
                    bodies[digest] = body
                    entries.append({
                        "key": listed["Key"],
                        "sha256": digest,
                        "content_type": response.get("ContentType"),
                        "metadata": response.get("Metadata") or {},
                    })
            objects[logical_id] = entries
            object_count += len(entries)
        for entries in self._orphan_buckets.values():
            for entry in entries:  # still on disk: keep them
                bodies.setdefault(entry["sha256"], self._read_blob(entry["sha256"],
                                                                   self.manifest_path))

        queues = list(self._node_queues())
        manifest = {
            "version": SNAPSHOT_VERSION,
            "stack": self._stack.name,
            "tables": tables,
            "parameters": parameters,
            "objects": objects,
            "queues": queues,
        }
        summary = Summary(items, len(self._tables()), len(parameters), object_count,
                          len(queues))
        return Capture(manifest, bodies, summary)

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

    def _collect_garbage(self, referenced: set[str]) -> None:
        for path in self._blobs.iterdir():
            if path.name not in referenced and not path.name.endswith(".tmp"):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()

    def _tables(self) -> dict[str, str]:
        return {r.logical_id: r.ref for r in self._stack.of_type("AWS::DynamoDB::Table")}

    def _buckets(self) -> dict[str, str]:
        return {r.logical_id: r.ref for r in self._stack.of_type("AWS::S3::Bucket")}


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
