"""Every JSON answer of the API, typed once: the routes return these, the OpenAPI document
describes them (:func:`control_plane.schema.json_schema`), and nothing else states their shape.

Answers about stored things are made from records (:mod:`control_plane.records`) by their ``of``
constructors, which decide what a caller sees (``url`` only while running, no internal fields).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any, Literal

from control_plane import records
from control_plane.accounts import User
from control_plane.records import NodeStatus
from control_plane.schema import field, json_object
from protocol.messages import StorageAccess
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
class OAuthError:
    """The OAuth2 endpoints' errors (RFC 6749 5.2)."""

    error: str
    error_description: str


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
    size: int | None = field(description="a saved image's bytes on the image server")
    source_instance: str | None = field(description="the instance a saved image was saved from")

    @classmethod
    def of(cls, image: records.Image) -> Image:
        return cls(id=image.image_id, name=image.name, image=image.image, port=image.port,
                   cpu=image.cpu, memory_mb=image.memory_mb, tags=image.tags,
                   kind="catalog" if image.in_catalog else "saved",
                   owner=None if image.in_catalog else image.owner, created_at=image.created_at,
                   size=image.size, source_instance=image.source_instance)


@json_object
class Images:
    images: list[Image]


@json_object
class Shared:
    id: str
    shared_with: list[str]


@json_object
class ShareLink:
    id: str
    url: str | None = field(description="only in the answer that made the link (its secret "
                                        "is kept hashed)")
    expires_at: str


@json_object
class ImageShared:
    id: str
    shared_with: list[str]
    links: list[ShareLink] = field(description="links not expired yet")


@json_object
class ExportLink:
    """Where to download the image as a ``docker save`` tar, until ``expires_at``."""

    url: str
    expires_at: str


@json_object
class StorageHealth:
    """The instance's storage helper as its node last reported it."""

    ok: bool
    message: str | None = field(description="what went wrong (the tool keeps running)")
    reported_at: str | None


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
    storage: StorageHealth | None = field(
        default=None, description="the storage helper's last report, while the instance runs")

    @classmethod
    def of(cls, instance: records.Instance) -> Instance:
        running = instance.state == InstanceState.RUNNING
        storage = None
        if running and instance.storage_ok is not None:
            storage = StorageHealth(ok=instance.storage_ok, message=instance.storage_message,
                                    reported_at=instance.storage_reported_at)
        return cls(
            id=instance.instance_id, name=instance.name, owner=instance.owner,
            image_id=instance.image_id, image=instance.image, cluster_id=instance.cluster_id,
            node_id=instance.placed_on, state=instance.state, version=instance.version,
            cpu=instance.cpu, memory_mb=instance.memory_mb,
            url=instance.url if running else None, progress=instance.progress,
            reason=instance.reason, saved_image_id=instance.saved_image_id,
            created_at=instance.created_at, updated_at=instance.updated_at, storage=storage)


@json_object
class Instances:
    instances: list[Instance]


@json_object
class Cluster:
    id: str
    name: str
    created_at: str | None
    public: bool = field(description="everyone may launch into it")
    users: list[str] = field(description="who else may, when it is not public (admins always "
                                         "may)")

    @classmethod
    def of(cls, cluster: records.Cluster) -> Cluster:
        return cls(id=cluster.cluster_id, name=cluster.name, created_at=cluster.created_at,
                   public=cluster.public, users=cluster.users)


@json_object
class Clusters:
    clusters: list[Cluster]


@json_object
class JoinTokenInfo:
    """An unused join token as listed: never the token itself (only its hash is stored)."""

    id: str = field(description="the token's sha256 (hex): what revoking names")
    cluster_id: str
    expires_at: str
    created_at: str | None
    created_by: str | None

    @classmethod
    def of(cls, grant: records.JoinGrant) -> JoinTokenInfo:
        return cls(id=grant.token_id, cluster_id=grant.cluster_id,
                   expires_at=datetime.fromtimestamp(grant.expires_at, UTC).isoformat(),
                   created_at=grant.created_at, created_by=grant.created_by)


@json_object
class JoinTokens:
    join_tokens: list[JoinTokenInfo]


@json_object
class JoinToken(JoinTokenInfo):
    """Shown once; a node enrols with it (``POST /api/nodes/enroll``) before ``expires_at``.
    ``command`` is the line a self-hoster runs: ``dit4c-node join`` with this portal's URL and
    the token (and the helpers image's digest, when one is published), then ``dit4c-node run``."""

    token: str
    command: str


@json_object
class Enrolled:
    node_id: str
    cluster_id: str
    queue_url: str
    events_queue_url: str
    helpers_image: str | None = field(
        default=None, description="the helpers image to pull from the image server (pinned by "
        "digest), null when the deployment publishes none")


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
class TunnelToken:
    """A renewed tunnel token for an instance placed on the calling node."""

    tunnel_token: str
    expires_at: int = field(description="the token's exp (POSIX seconds)")


@json_object
class Revoked:
    host_sha256: str = field(description="SHA-256 (hex) of the revoked host name")
    revoked_at: float = field(description="tunnel tokens issued at or before this moment "
                                          "(POSIX seconds) are refused")
    expires_at: float = field(description="after this no such token can pass any more")


@json_object
class Revocations:
    """Every revocation a router must know when it starts (the rest reach it as messages)."""

    revocations: list[Revoked]


@json_object
class StorageCredentials:
    access_key_id: str
    secret_access_key: str
    session_token: str
    expiration: str


@json_object
class StorageSession:
    """A user's storage for a node's instance: ``protocol.messages.StorageAccess`` as JSON
    (credentials allowing only ``prefix``, for at most an hour)."""

    kind: Literal["s3"]
    bucket: str
    prefix: str
    credentials: StorageCredentials
    endpoint_url: str | None = field(description="S3 as pods reach it; null on AWS")
    region: str
    quota_bytes: int | None

    @classmethod
    def of(cls, access: StorageAccess) -> StorageSession:
        creds = access.credentials
        return cls(kind="s3", bucket=access.bucket, prefix=access.prefix,
                   credentials=StorageCredentials(
                       access_key_id=creds["access_key_id"],
                       secret_access_key=creds["secret_access_key"],
                       session_token=creds.get("session_token", ""),
                       expiration=creds.get("expiration", "")),
                   endpoint_url=access.endpoint_url, region=access.region,
                   quota_bytes=access.quota_bytes)


@json_object
class StorageUse:
    """A user's persistent storage (at ``/mnt/storage`` in each of their instances)."""

    username: str
    used_bytes: int
    quota_bytes: int
    counted_at: str
    mount: str = field(default="/mnt/storage", description="where instances see it")


@json_object
class Node:
    id: str
    cluster_id: str
    name: str
    state: NodeStatus
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
    helpers: str | None = field(description='"ok", or what is wrong with the node\'s helpers '
                                "image (from its last heartbeat)")

    @classmethod
    def of(cls, node: records.Node, now: float | None = None) -> Node:
        now = time.time() if now is None else now
        return cls(
            id=node.node_id, cluster_id=node.cluster_id, name=node.name, state=node.status,
            cpu_total=node.cpu_milli_total / 1000, memory_mb_total=node.memory_mb_total,
            cpu_reserved=node.cpu_milli_reserved / 1000,
            memory_mb_reserved=node.memory_mb_reserved, cpu_used=node.cpu_used or 0.0,
            memory_mb_used=node.memory_mb_used or 0, load=node.load or 0.0,
            running=node.running or [],
            version=node.daemon_version, enrolled_at=node.enrolled_at,
            heartbeat_age_seconds=max(0, round(now - node.last_heartbeat, 1))
            if node.last_heartbeat else None, helpers=node.helpers)


@json_object
class Nodes:
    nodes: list[Node]


@json_object
class PlacedInstance:
    id: str
    state: InstanceState


@json_object
class Placed:
    """What the control plane has placed on one node (any state): what that node may keep.
    An instance of the node's that is not here is gone (deleted, or placed elsewhere)."""

    instances: list[PlacedInstance]

    @classmethod
    def of(cls, instances: list[records.Instance]) -> Placed:
        return cls(instances=[PlacedInstance(id=i.instance_id, state=i.state)
                              for i in instances])


@json_object
class Health:
    status: Literal["ok", "degraded"]
    version: str
    registry: str | None = field(description="the image server (host:port), if any")
    helpers_image: str | None = field(
        default=None, description="the helpers image nodes pull (pinned by digest), if "
        "published: a join command pins the same digest")
    dependencies: dict[str, str] = field(description='"ok" or "error: <kind>" for each')


@json_object
class JWKS:
    """The portal's public signing keys (RFC 7517)."""

    keys: list[dict[str, Any]]


@json_object
class RegistryToken:
    """Docker's token protocol answer (``token`` and ``access_token`` are the same)."""

    token: str
    access_token: str
    expires_in: int
    issued_at: str
