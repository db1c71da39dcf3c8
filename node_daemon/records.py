"""Durable per-instance records: what each instance should be, and what was last reported.

One JSON file per instance under ``<data dir>/instances/``, written atomically (owner-only: a
start record holds the instance's tunnel token and OAuth secret until discard drops it). The
records are the basis of idempotency and reconciliation: a command first changes the record,
then the pod, and only then is its message deleted from the queue.

A discarded instance keeps a small tombstone (no secrets) so that a late start or stop for it
is recognised and ignored; tombstones older than :data:`TOMBSTONE_DAYS` are pruned.

On disk a record is one JSON object of its fields, ``start`` (and ``save``, while saving) being
the command exactly as it came off the queue (:meth:`protocol.messages.Message.to_dict`),
checked by the messages module when read. The format is that of the first release (plus the
save's fields, absent there), so a node upgraded in place reads the records of the pods it
already runs and adopts them.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import TypeVar

from node_daemon.errors import ConfigError
from node_daemon.files import ensure_private_dir, write_atomic
from protocol.errors import MessageError
from protocol.ids import ID_PATTERN, is_id
from protocol.messages import Message, SaveInstance, StartInstance, from_dict

log = logging.getLogger("dit4c.node.records")

TOMBSTONE_DAYS = 7
SAVE_FIELDS = ("save", "committed_image", "saved_size")


class Desired(StrEnum):
    """What the control plane last asked for this instance."""

    RUNNING = "running"
    STOPPED = "stopped"
    SAVED = "saved"
    DISCARDED = "discarded"


@dataclass
class InstanceRecord:
    instance_id: str
    desired: Desired
    start: StartInstance | None = None
    """The start command (with its secrets) until the instance is discarded."""
    state: str | None = None
    """The instance's state as this node knows it (an InstanceState value)."""
    reported: str | None = None
    """The last state the events queue accepted; differs from ``state`` until it is sent."""
    reason: str | None = None
    save_image: str | None = None
    """Where the save goes (``registry/repository:tag``), from the save command."""
    save: SaveInstance | None = None
    """The save command (with its push token) while the save is under way."""
    committed_image: str | None = None
    """The id of the tool container's commit, kept on this node until it is pushed (a retried
    save pushes it again instead of committing anew)."""
    saved_image: str | None = None
    """The pushed image, ``registry/repository@digest``."""
    saved_size: int | None = None
    progress: dict[str, int] = field(default_factory=dict)
    updated_at: float = field(default_factory=time.time)
    discarded_at: str | None = None
    """``sent_at`` of the discard that made this record a tombstone: a start the control plane
    sent after it is a new placement of the same instance (the control plane's clock on both)."""

    def to_json(self) -> bytes:
        fields = asdict(replace(self, start=None, save=None))
        fields["start"] = None if self.start is None else self.start.to_dict()
        fields["save"] = None if self.save is None else self.save.to_dict()
        # The save's fields and the tombstone's time are left out while unset: a record with
        # neither is byte for byte the first release's, which an older daemon (downgraded)
        # still reads.
        for name in (*SAVE_FIELDS, "discarded_at"):
            if fields[name] is None:
                del fields[name]
        return json.dumps(fields, sort_keys=True).encode()

    @classmethod
    def from_json(cls, text: str | bytes) -> InstanceRecord:
        """Raise ValueError, TypeError, KeyError or MessageError for what is not a record."""
        raw = json.loads(text)
        start = _command(raw.pop("start", None), StartInstance)
        save = _command(raw.pop("save", None), SaveInstance)
        return cls(**{**raw, "desired": Desired(raw["desired"]), "start": start, "save": save})


M = TypeVar("M", bound=Message)


def _command(raw: object, kind: type[M]) -> M | None:
    if raw is None:
        return None
    message = from_dict(raw)
    if not isinstance(message, kind):
        raise MessageError(f"a record's {kind.TYPE} is a {message.TYPE}")
    return message


class RecordStore:
    """Records in ``directory``; :meth:`put` is atomic and durable when it returns."""

    def __init__(self, directory: Path) -> None:
        ensure_private_dir(directory)
        self._dir = directory

    def _path(self, instance_id: str) -> Path:
        # Commands are decoded with their ids checked; this guards the file name all the same.
        if not is_id(instance_id):
            raise ConfigError(f"instance id {instance_id!r} is not an id ({ID_PATTERN})")
        return self._dir / f"{instance_id}.json"

    def get(self, instance_id: str) -> InstanceRecord | None:
        path = self._path(instance_id)
        try:
            return _load(path)
        except FileNotFoundError:
            return None

    def put(self, record: InstanceRecord) -> None:
        record.updated_at = time.time()
        write_atomic(self._path(record.instance_id), record.to_json())

    def all(self) -> list[InstanceRecord]:
        records = []
        for path in sorted(self._dir.glob("*.json")):
            try:
                records.append(_load(path))
            except FileNotFoundError:
                continue
            except (ValueError, TypeError, KeyError, MessageError) as exc:
                # Keep the file for a human; never act on a record we cannot read.
                log.error("unreadable record %s left aside: %r", path, exc)
                path.rename(path.with_suffix(".corrupt"))
        return records

    def prune_tombstones(self, now: float | None = None) -> int:
        cutoff = (now if now is not None else time.time()) - TOMBSTONE_DAYS * 86400
        pruned = 0
        for record in self.all():
            if record.desired is Desired.DISCARDED and record.reported == "discarded" \
                    and record.updated_at < cutoff:
                self._path(record.instance_id).unlink(missing_ok=True)
                pruned += 1
        return pruned


def _load(path: Path) -> InstanceRecord:
    return InstanceRecord.from_json(path.read_bytes())
