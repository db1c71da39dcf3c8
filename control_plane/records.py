"""What the tables hold, typed: one frozen dataclass per kind of item (``from_item``/``to_item``).

A record's fields are its item's attribute names and types, so domain code reads
``instance.node_queue_url`` (checked by mypy) instead of poking at dicts, and changes a record
with :func:`dataclasses.replace` (whose keywords mypy checks too). The item shapes are the ones
the tables have always held, so stored data loads unchanged:

- an attribute that may be absent is ``T | None``: absent when ``None`` (a stored ``NULL`` reads
  as ``None`` too);
- a field marked :data:`SPARSE` is absent while it holds its default (``reserved`` is stored only
  when true, ``attempts`` from the first placement on);
- enums are stored as their string values; numbers come back as ``int`` or ``float`` from
  :mod:`control_plane.table` and are converted to the field's type.

Attributes a record does not name are ignored when reading; writes that change a record
(:meth:`control_plane.instances.Instances.transition`) touch only the attributes that differ.
"""

from __future__ import annotations

import dataclasses
import enum
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Self

from control_plane.schema import hints, unwrap_optional
from control_plane.table import Item
from protocol.states import InstanceState

SPARSE = {"sparse": True}
"""Field metadata: the attribute is absent while the field holds its default."""
UNPLACED = "unplaced"
"""``node_id`` of an instance on no node: keeps every instance in the ``by-node`` index, so an
admin can list them all with Queries (no node id is ever this word: ids are hex)."""
CATALOG_OWNER = "_catalog"
"""``owner`` of catalog images (a saved image belongs to its user)."""
CLUSTER_KIND = "cluster"
"""The by-kind index's partition for every cluster item."""


class Record:
    """Base of the records: ``from_item`` and ``to_item`` from the dataclass fields."""

    @classmethod
    def from_item(cls, item: Mapping[str, Any]) -> Self:
        kinds = hints(typing.cast(Any, cls))
        return cls(**{f.name: _load(kinds[f.name], item[f.name])
                      for f in dataclasses.fields(cls)  # type: ignore[arg-type]
                      if item.get(f.name) is not None})

    def to_item(self) -> Item:
        item: Item = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if value is None or (f.metadata.get("sparse") and value == _default(f)):
                continue
            item[f.name] = value.value if isinstance(value, enum.Enum) else value
        return item


def _load(kind: Any, value: Any) -> Any:
    kind, _ = unwrap_optional(kind)
    if isinstance(kind, type) and issubclass(kind, enum.Enum | float | int | bool):
        return kind(value)
    return value


def _default(f: dataclasses.Field[Any]) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


@dataclass(frozen=True, kw_only=True)
class Instance(Record):
    """InstancesTable. ``transition``/``transition_deadline`` exist while the state is
    transitional (the sparse ``by-transition`` index); ``reserved`` while it holds room on its
    node; ``node_queue_url`` while it is placed."""

    instance_id: str
    owner: str
    name: str
    image_id: str
    image: str
    port: int
    cpu: float
    memory_mb: int
    cluster_id: str
    hostname: str
    url: str
    state: InstanceState = InstanceState.PENDING
    version: int = 1
    progress: dict[str, int] = field(default_factory=dict)
    node_id: str = UNPLACED
    created_at: str = ""
    updated_at: str = ""
    transition: InstanceState | None = None
    transition_deadline: str | None = None
    reserved: bool = field(default=False, metadata=SPARSE)
    node_queue_url: str | None = None
    reason: str | None = None
    attempts: int = field(default=0, metadata=SPARSE)
    saved_image: str | None = None
    saved_image_id: str | None = None
    last_report_at: str | None = None
    storage_ok: bool | None = None
    """The storage helper's health as its node last reported it (None: no report)."""
    storage_message: str | None = None
    storage_reported_at: str | None = None

    @property
    def placed_on(self) -> str | None:
        return None if self.node_id == UNPLACED else self.node_id


class NodeStatus(StrEnum):
    ACTIVE = "active"
    DRAINING = "draining"
    """No new placements."""
    DECOMMISSIONED = "decommissioned"
    """For good: no credentials, its live instances fail."""


@dataclass(frozen=True, kw_only=True)
class Node(Record):
    """NodesTable. Capacity in integer millicores and MB (conditions cannot do float
    arithmetic reliably); usage (``cpu_used`` ...) is there from the first heartbeat on.
    ``*_enrolled``: the capacity declared at enrolment, the most a heartbeat can claim (absent
    on nodes enrolled before it was kept, until their first heartbeat)."""

    node_id: str
    cluster_id: str
    name: str = ""
    public_jwk: dict[str, str]
    kid: str
    queue_url: str
    queue_arn: str
    cpu_milli_total: int
    memory_mb_total: int
    cpu_milli_reserved: int = 0
    memory_mb_reserved: int = 0
    cpu_milli_enrolled: int | None = None
    memory_mb_enrolled: int | None = None
    status: NodeStatus = NodeStatus.ACTIVE
    enrolled_at: str | None = None
    last_heartbeat: float = 0.0
    heartbeat_sent_at: str | None = None
    daemon_version: str | None = None
    cpu_used: float | None = None
    memory_mb_used: int | None = None
    load: float | None = None
    running: list[str] | None = None
    helpers: str | None = None
    """The helpers image as the node's last heartbeat found it (``protocol.messages.HELPERS_OK``
    or what is wrong)."""
    strays: dict[str, str] | None = None
    """Instances it reports running that the records say should not run there: id -> since
    when (the node's clock) a repair is waited for (:mod:`control_plane.reconcile`)."""
    missing: dict[str, str] | None = None
    """Instances the records have running there that it no longer reports: id -> since when."""


@dataclass(frozen=True, kw_only=True)
class Cluster(Record):
    """ClustersTable (listed through the ``by-kind`` index: ``kind`` is always ``cluster``).

    Who may launch into it: everyone when ``public`` (clusters stored before access rules
    existed read as public), else admins and the ``users`` listed (admins set both)."""

    cluster_id: str
    name: str = ""
    kind: str = CLUSTER_KIND
    created_at: str | None = None
    public: bool = field(default=True, metadata=SPARSE)
    users: list[str] = field(default_factory=list, metadata=SPARSE)

    def admits(self, username: str, *, admin: bool) -> bool:
        return self.public or admin or username in self.users


JOIN_PREFIX = "join:"


@dataclass(frozen=True, kw_only=True)
class JoinGrant(Record):
    """TokensTable, ``token_key = join:<sha256 of the token>``: one node may join ``cluster_id``
    until ``expires_at`` (epoch seconds; also the table's TTL attribute). Listed per cluster
    through the ``by-cluster`` index (only join grants carry ``cluster_id``); the token itself
    is never stored, so a listed grant shows its hash's prefix, not the secret."""

    token_key: str
    cluster_id: str
    expires_at: int
    created_at: str | None = None
    created_by: str | None = None

    @property
    def token_id(self) -> str:
        """The sha256 of the token: names the grant (to revoke it) without revealing it."""
        return self.token_key.removeprefix(JOIN_PREFIX)


@dataclass(frozen=True, kw_only=True)
class Image(Record):
    """ImagesTable: a catalog entry (owner :data:`CATALOG_OWNER`) or a user's saved image."""

    image_id: str
    owner: str
    name: str
    image: str
    port: int
    cpu: float
    memory_mb: int
    tags: list[str] = field(default_factory=list)
    created_at: str
    source_instance: str | None = None
    repository: str | None = None
    """A saved image's repository on the image server (``image`` is ``<registry>/<repository>
    @<digest>``)."""
    digest: str | None = None
    size: int | None = None
    """Bytes a saved image takes on the image server."""

    @property
    def in_catalog(self) -> bool:
        return self.owner == CATALOG_OWNER


@dataclass(frozen=True, kw_only=True)
class ImageRef(Record):
    """ImagesTable, ``image_id = ref:<image reference>``: the catalog entry of that reference
    (so that two writers upserting one reference cannot make two entries)."""

    image_id: str
    target: str
