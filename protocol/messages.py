"""Queue messages (contract: shape, see ARCHITECTURE.md).

Every message is one JSON object::

    {"type": "start_instance", "v": 1, "id": "<unique>", "sent_at": "<RFC 3339 UTC>", ...fields}

- control plane -> node (the node's own queue): :class:`StartInstance`, :class:`StopInstance`,
  :class:`SaveInstance`, :class:`DiscardInstance`.
- node -> control plane (the events queue): :class:`InstanceStateEvent`, :class:`NodeHeartbeat`.
- edge router -> control plane (the events queue): :class:`InstanceActivity`.
- control plane -> edge routers (the revocation fan-out): :class:`Revocation`.

SQS delivers at least once and in any order, so every consumer must be idempotent: ``id`` is the
deduplication key and ``sent_at`` orders reports about the same thing.

Every node -> control plane message carries, as the SQS message attribute
:data:`SIGNATURE_ATTRIBUTE`, the node's signature on its exact body
(:func:`protocol.tokens.event_claims`, signed with the key the node enrolled): the events queue
is shared by every node, so the ``node_id`` inside a message proves nothing by itself.

``decode`` refuses anything that is not exactly a known message: unknown type or version, a
missing field, a field of the wrong type, an instance or node id that breaks the one id rule
(:mod:`protocol.ids`; such fields are typed :data:`Id`). Unknown extra fields are ignored so that
a newer sender can add optional fields without breaking an older consumer.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Final, TypeVar

from protocol import PROTOCOL_VERSION
from protocol.errors import MessageError
from protocol.ids import ID_PATTERN, is_id

T = TypeVar("T")
MAX_MESSAGE_BYTES = 256 * 1024
"""SQS's own limit; a message larger than this cannot be sent, so refuse to build one."""

_ID_RULE: Final = "protocol.ids"
Id = Annotated[str, _ID_RULE]
"""A field holding an instance or node id: :func:`decode` refuses one that is not
:func:`protocol.ids.is_id` (ids name files, containers, queues and hosts)."""


SIGNATURE_ATTRIBUTE: Final = "dit4c-signature"
"""The SQS message attribute (``String``) holding a node's signature on an event's body."""

HELPERS_OK: Final = "ok"
""":attr:`NodeHeartbeat.helpers` when the node has the helpers image it was told to run."""

MAX_CLOCK_SKEW_SECONDS: Final = 60
"""How far in the future a report's ``sent_at`` may be (clocks drift); beyond, it is refused:
a report from the future would make every later true report look stale."""


def new_id() -> str:
    return uuid.uuid4().hex


def utcnow_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def sent_time(message: Message) -> datetime:
    """``sent_at`` as an aware datetime; MessageError unless it is RFC 3339 with a zone."""
    try:
        when = datetime.fromisoformat(message.sent_at)
    except ValueError:
        raise MessageError(f"{message.TYPE}.sent_at: {message.sent_at!r} is not a time") from None
    if when.tzinfo is None:
        raise MessageError(f"{message.TYPE}.sent_at: {message.sent_at!r} has no time zone")
    return when


@dataclass(frozen=True, kw_only=True)
class Message:
    """Base of every message; subclasses set ``TYPE`` and add their fields."""

    TYPE: ClassVar[str] = ""
    id: str = field(default_factory=new_id)
    sent_at: str = field(default_factory=utcnow_iso)

    def to_dict(self) -> dict[str, Any]:
        body = dataclasses.asdict(self)
        return {"type": self.TYPE, "v": PROTOCOL_VERSION, **body}

    def encode(self) -> str:
        text = json.dumps(self.to_dict(), separators=(",", ":"), sort_keys=True)
        if len(text.encode()) > MAX_MESSAGE_BYTES:
            raise MessageError(f"{self.TYPE} message is larger than {MAX_MESSAGE_BYTES} bytes")
        return text


# --- control plane -> node ------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class OAuthClient:
    """The auth helper's credentials as an OAuth2 client of the portal."""

    client_id: str
    client_secret: str
    authorize_url: str
    token_url: str
    jwks_url: str
    """The portal's JWKS, to verify the access tokens it issues."""


@dataclass(frozen=True, kw_only=True)
class RegistryAccess:
    """Where and how the node pulls (and the upload helper pushes) this instance's image."""

    registry: str
    """Host[:port] of the image server, as image references name it (the engine pulls it)."""
    token: str
    """A registry token signed by the portal (``protocol.registry``), scoped to this job: pull
    of the image to start; push of the image to save (and pull of the one it was started
    from, whose layers are then mounted rather than uploaded)."""


@dataclass(frozen=True, kw_only=True)
class StorageAccess:
    """The user's persistent storage, mounted at ``protocol.pod.STORAGE_MOUNT`` by the storage
    helper; also what the portal answers when the node renews it."""

    kind: str
    """"s3" today."""
    bucket: str
    prefix: str
    """The user's key prefix, ending in ``/`` (the credentials allow nothing outside it)."""
    credentials: dict[str, str]
    """``access_key_id``, ``secret_access_key``, ``session_token``, ``expiration`` (RFC 3339):
    STS credentials whose session policy allows only ``prefix``."""
    endpoint_url: str | None = None
    region: str = "us-east-1"
    quota_bytes: int | None = None
    """The user's storage quota; None: none."""


@dataclass(frozen=True, kw_only=True)
class StartInstance(Message):
    TYPE: ClassVar[str] = "start_instance"
    instance_id: Id
    image: str
    """Image reference as the Docker engine names it (``repo:tag`` or ``repo@sha256:...``)."""
    port: int
    """The port the tool serves HTTP on inside the pod."""
    cpu: float
    """CPU limit in cores."""
    memory_mb: int
    hostname: str
    """The public host of the instance, without port, e.g. ``abc123.localhost``."""
    url: str
    """The instance's public URL as browsers see it, e.g. ``http://abc123.localhost:8080``."""
    tunnel_token: str
    router_urls: list[str]
    """Tunnel endpoints (``ws://`` or ``wss://``) of every edge router; the listener dials all."""
    oauth: OAuthClient
    pids_limit: int = 512
    env: dict[str, str] = field(default_factory=dict)
    """Environment for the tool container only (never helper secrets)."""
    registry: RegistryAccess | None = None
    storage: StorageAccess | None = None


@dataclass(frozen=True, kw_only=True)
class StopInstance(Message):
    TYPE: ClassVar[str] = "stop_instance"
    instance_id: Id
    grace_seconds: int = 10


@dataclass(frozen=True, kw_only=True)
class SaveInstance(Message):
    TYPE: ClassVar[str] = "save_instance"
    instance_id: Id
    image: str
    """Where the saved image goes: ``registry/namespace/name:tag``."""
    registry: RegistryAccess | None = None
    upload_url: str | None = None
    """The image server's base URL as pods reach it (the upload helper pushes there), e.g.
    ``http://host.docker.internal:5001``. Without it (or ``registry``) the commit stays on
    the node."""


@dataclass(frozen=True, kw_only=True)
class DiscardInstance(Message):
    TYPE: ClassVar[str] = "discard_instance"
    instance_id: Id


# --- node / router -> control plane ---------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class InstanceStateEvent(Message):
    TYPE: ClassVar[str] = "instance_state"
    node_id: Id
    instance_id: Id
    state: str
    """One of :class:`protocol.states.InstanceState`'s values."""
    reason: str | None = None
    """Human-readable, shown to the user when ``state`` is ``failed``."""
    progress: dict[str, int] = field(default_factory=dict)
    """Percentages, e.g. ``{"pull": 40}`` or ``{"save": 90}``."""
    image: str | None = None
    """With ``saved``: the reference of the saved image (``registry/repository@digest``)."""
    size: int | None = None
    """With ``saved``: bytes the saved image takes on the image server."""


@dataclass(frozen=True, kw_only=True)
class NodeHeartbeat(Message):
    TYPE: ClassVar[str] = "node_heartbeat"
    node_id: Id
    version: str
    cpu_total: float
    memory_mb_total: int
    cpu_used: float
    memory_mb_used: int
    load: float
    running: list[Id]
    """Ids of the instances whose pods this node runs now."""
    helpers: str | None = None
    """The helpers image as the node finds it: :data:`HELPERS_OK`, or what is wrong and what
    to do (missing, wrong digest, pull refused); None from daemons older than the field."""
    holds: list[Id] | None = None
    """Ids of every instance this node has a live record of (starting, running, stopped,
    failed, saved: anything not discarded). None from a node that does not say: the control
    plane then never concludes that the node lacks an instance."""


@dataclass(frozen=True, kw_only=True)
class InstanceActivity(Message):
    TYPE: ClassVar[str] = "instance_activity"
    router_id: str
    last_activity: dict[Id, str]
    """instance id -> RFC 3339 time of the last request the router carried for it."""


# --- control plane -> edge routers ----------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Revocation(Message):
    TYPE: ClassVar[str] = "revocation"
    instance_id: Id
    hostname: str
    reason: str


MESSAGE_TYPES: dict[str, type[Message]] = {
    cls.TYPE: cls
    for cls in (
        StartInstance,
        StopInstance,
        SaveInstance,
        DiscardInstance,
        InstanceStateEvent,
        NodeHeartbeat,
        InstanceActivity,
        Revocation,
    )
}

NODE_COMMANDS = (StartInstance, StopInstance, SaveInstance, DiscardInstance)
EVENTS = (InstanceStateEvent, NodeHeartbeat, InstanceActivity)


def decode(text: str | bytes) -> Message:
    """Parse and validate one message; raise :class:`MessageError` saying what is wrong."""
    if len(text) > MAX_MESSAGE_BYTES:
        raise MessageError("message too large")
    try:
        raw = json.loads(text)
    except ValueError as exc:
        raise MessageError(f"message is not JSON: {exc}") from None
    return from_dict(raw)


def from_dict(raw: object) -> Message:
    """:func:`decode` for a message already parsed from JSON (the inverse of
    :meth:`Message.to_dict`), e.g. one kept inside a durable record."""
    if not isinstance(raw, dict):
        raise MessageError("message is not a JSON object")
    kind = raw.get("type")
    cls = MESSAGE_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise MessageError(f"unknown message type {kind!r}")
    if raw.get("v") != PROTOCOL_VERSION:
        raise MessageError(f"unsupported version {raw.get('v')!r} for {kind}")
    message: Message = _build(cls, raw, str(kind))
    sent_time(message)
    return message


def value_of(cls: type[T], raw: object) -> T:
    """``raw`` (parsed JSON) as ``cls``, a dataclass of this module that is not a message
    (e.g. the portal's answer of a :class:`StorageAccess`), checked as :func:`decode` checks."""
    if not isinstance(raw, dict):
        raise MessageError(f"{cls.__name__}: expected an object")
    value: T = _build(cls, raw, cls.__name__)
    return value


def _build(cls: type[Any], raw: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls, include_extras=True)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise MessageError(f"{where}: missing field {f.name!r}")
            continue
        kwargs[f.name] = _coerce(hints[f.name], raw[f.name], f"{where}.{f.name}")
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, where: str) -> Any:  # noqa: PLR0911, PLR0912 - a branch a kind
    origin = typing.get_origin(hint)
    if origin is Annotated:
        base, *marks = typing.get_args(hint)
        value = _coerce(base, value, where)
        if _ID_RULE in marks and not is_id(value):
            raise MessageError(f"{where}: {value!r} is not an id ({ID_PATTERN})")
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(inner, value, where)
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise MessageError(f"{where}: expected a list")
        return [_coerce(item, v, f"{where}[]") for v in value]
    if origin is dict:
        key_t, val_t = typing.get_args(hint)
        if not isinstance(value, dict):
            raise MessageError(f"{where}: expected an object")
        return {
            _coerce(key_t, k, where): _coerce(val_t, v, f"{where}.{k}") for k, v in value.items()
        }
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise MessageError(f"{where}: expected an object")
        return _build(hint, value, where)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise MessageError(f"{where}: expected a number")
        return float(value)
    if hint in (str, int, bool):
        # bool is an int in Python; a JSON true is not a port number.
        if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
            raise MessageError(f"{where}: expected {hint.__name__}")
        return value
    raise MessageError(f"{where}: unsupported field type {hint!r}")  # pragma: no cover
