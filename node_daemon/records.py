"""Durable per-instance records: what each instance should be, and what was last reported.

One JSON file per instance under ``<data dir>/instances/``, written atomically (owner-only: a
start record holds the instance's tunnel token and OAuth secret until discard drops it). The
records are the basis of idempotency and reconciliation: a command first changes the record,
then the pod, and only then is its message deleted from the queue.

A discarded instance keeps a small tombstone (no secrets) so that a late start or stop for it
is recognised and ignored; tombstones older than :data:`TOMBSTONE_DAYS` are pruned.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from node_daemon.errors import ConfigError
from node_daemon.files import ensure_private_dir, write_atomic
from protocol.messages import SaveInstance, StartInstance, decode

log = logging.getLogger("dit4c.node.records")

INSTANCE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")
"""Instance ids name files and containers, so they are held to a safe alphabet."""
TOMBSTONE_DAYS = 7


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
    start: dict[str, Any] | None = None
    """The start_instance message (with its secrets) until the instance is discarded."""
    state: str | None = None
    """The instance's state as this node knows it (an InstanceState value)."""
    reported: str | None = None
    """The last state the events queue accepted; differs from ``state`` until it is sent."""
    reason: str | None = None
    save_image: str | None = None
    """Where the save goes (``registry/repository:tag``), from the save command."""
    save: dict[str, Any] | None = None
    """The save_instance message (with its push token) until the save is done."""
    committed_image: str | None = None
    """The id of the tool container's commit, kept on this node until it is pushed (a retried
    save pushes it again instead of committing anew)."""
    saved_image: str | None = None
    """The pushed image, ``registry/repository@digest``."""
    saved_size: int | None = None
    progress: dict[str, int] = field(default_factory=dict)
    updated_at: float = field(default_factory=time.time)

    def start_message(self) -> StartInstance | None:
        if self.start is None:
            return None
        message = decode(json.dumps(self.start))
        assert isinstance(message, StartInstance)
        return message

    def save_message(self) -> SaveInstance | None:
        if self.save is None:
            return None
        message = decode(json.dumps(self.save))
        assert isinstance(message, SaveInstance)
        return message


class RecordStore:
    """Records in ``directory``; :meth:`put` is atomic and durable when it returns."""

    def __init__(self, directory: Path) -> None:
        ensure_private_dir(directory)
        self._dir = directory

    def _path(self, instance_id: str) -> Path:
        if not INSTANCE_ID.match(instance_id):
            raise ConfigError(f"instance id {instance_id!r} is not [A-Za-z0-9_-]{{1,63}}")
        return self._dir / f"{instance_id}.json"

    def get(self, instance_id: str) -> InstanceRecord | None:
        path = self._path(instance_id)
        try:
            return _load(path)
        except FileNotFoundError:
            return None

    def put(self, record: InstanceRecord) -> None:
        record.updated_at = time.time()
        write_atomic(self._path(record.instance_id),
                     json.dumps(asdict(record), sort_keys=True).encode())

    def all(self) -> list[InstanceRecord]:
        records = []
        for path in sorted(self._dir.glob("*.json")):
            try:
                records.append(_load(path))
            except FileNotFoundError:
                continue
            except (ValueError, TypeError, KeyError) as exc:
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
    raw = json.loads(path.read_text())
    raw["desired"] = Desired(raw["desired"])
    return InstanceRecord(**raw)
