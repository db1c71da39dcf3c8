"""Every JSON answer of the API, typed once: the routes return these, the OpenAPI document
describes them (:func:`control_plane.schema.json_schema`), and nothing else states their shape.

Answers about stored things are made from the table's items by their ``of`` constructors, which
decide what a caller sees (``url`` only while running, no internal fields).
"""

from __future__ import annotations

import time
from typing import Any, Literal

from control_plane.accounts import User
from control_plane.catalog import CATALOG_OWNER
from control_plane.instances import UNPLACED
from control_plane.schema import field, json_object
from control_plane.table import Item
from protocol.states import InstanceState


@json_object
class ErrorDetail:
    code: str
    message: str


@json_object
class Error:
    """Every 4xx and 5xx answer (except the OAuth2 endpoints, which speak RFC 6749)."""

    error: ErrorDetail


@json_object
class Session:
    """The logged-in user and the CSRF token their state-changing requests must send."""

    user: User
    csrf_token: str


@json_object
class Provider:
    name: str
    display_name: str
    kind: str
    login_url: str


@json_object
class Providers:
    providers: list[Provider]


@json_object
class Image:
    id: str
    name: str
    image: str
    port: int
    cpu: float
    memory_mb: int
    tags: list[str]
    kind: Literal["catalog", "saved"]
    owner: str | None
    created_at: str

    @classmethod
    def of(cls, item: Item) -> Image:
        catalog = item["owner"] == CATALOG_OWNER
        return cls(id=item["image_id"], name=item["name"], image=item["image"],
                   port=item["port"], cpu=item["cpu"], memory_mb=item["memory_mb"],
                   tags=item.get("tags", []), kind="catalog" if catalog else "saved",
                   owner=None if catalog else item["owner"], created_at=item["created_at"])


@json_object
class Images:
    images: list[Image]


@json_object
class Shared:
    id: str
    shared_with: list[str]


@json_object
class Instance:
    id: str
    name: str
    owner: str
    image_id: str
    image: str
    cluster_id: str
    node_id: str | None
    state: InstanceState
    version: int
    cpu: float
    memory_mb: int
    url: str | None = field(description="set once the instance is running")
    progress: dict[str, int] = field(description='percentages, e.g. {"pull": 40}')
    reason: str | None = field(description="why it failed (or waits), for people")
    saved_image_id: str | None
    created_at: str
    updated_at: str

    @classmethod
    def of(cls, item: Item) -> Instance:
        state = InstanceState(item["state"])
        return cls(
            id=item["instance_id"], name=item.get("name", ""), owner=item["owner"],
            image_id=item["image_id"], image=item["image"], cluster_id=item["cluster_id"],
            node_id=None if item.get("node_id") == UNPLACED else item.get("node_id"),
            state=state, version=item["version"], cpu=item["cpu"],
            memory_mb=item["memory_mb"], url=item.get("url") if state == InstanceState.RUNNING
            else None, progress=item.get("progress", {}), reason=item.get("reason"),
            saved_image_id=item.get("saved_image_id"), created_at=item["created_at"],
            updated_at=item["updated_at"])


@json_object
class Instances:
    instances: list[Instance]


@json_object
class Cluster:
    id: str
    name: str
    created_at: str | None

    @classmethod
    def of(cls, item: Item) -> Cluster:
        return cls(id=item["cluster_id"], name=item.get("name", ""),
                   created_at=item.get("created_at"))


@json_object
class Clusters:
    clusters: list[Cluster]


@json_object
class JoinToken:
    """Shown once; a node enrols with it (``POST /api/nodes/enroll``) before ``expires_at``."""

    token: str
    cluster_id: str
    expires_at: str


@json_object
class Enrolled:
    node_id: str
    cluster_id: str
    queue_url: str
    events_queue_url: str


@json_object
class Credentials:
    """Short-lived AWS credentials allowing only the node's own queue and the events queue."""

    access_key_id: str
    secret_access_key: str
    session_token: str
    expiration: str
    region: str
    queue_url: str
    events_queue_url: str
    endpoint_url: str | None = field(description="null on AWS")


@json_object
class Node:
    id: str
    cluster_id: str
    name: str
    state: Literal["active", "draining", "decommissioned"]
    cpu_total: float
    memory_mb_total: int
    cpu_reserved: float
    memory_mb_reserved: int
    cpu_used: float
    memory_mb_used: int
    load: float
    running: list[str]
    version: str | None
    enrolled_at: str | None
    heartbeat_age_seconds: float | None

    @classmethod
    def of(cls, item: Item, now: float | None = None) -> Node:
        now = time.time() if now is None else now
        beat = item.get("last_heartbeat")
        return cls(
            id=item["node_id"], cluster_id=item["cluster_id"], name=item.get("name", ""),
            state=item.get("status", "active"), cpu_total=item["cpu_milli_total"] / 1000,
            memory_mb_total=item["memory_mb_total"],
            cpu_reserved=item.get("cpu_milli_reserved", 0) / 1000,
            memory_mb_reserved=item.get("memory_mb_reserved", 0),
            cpu_used=item.get("cpu_used", 0), memory_mb_used=item.get("memory_mb_used", 0),
            load=item.get("load", 0), running=item.get("running", []),
            version=item.get("daemon_version"), enrolled_at=item.get("enrolled_at"),
            heartbeat_age_seconds=None if beat is None else max(0, round(now - beat, 1)))


@json_object
class Nodes:
    nodes: list[Node]


@json_object
class Health:
    status: Literal["ok", "degraded"]
    version: str
    dependencies: dict[str, str] = field(description='"ok" or "error: <kind>" for each')


@json_object
class JWKS:
    """The portal's public signing keys (RFC 7517)."""

    keys: list[dict[str, Any]]
