"""The control plane's node endpoints (contract: docs/contracts.md, "Node API").

- ``GET /api/health`` -> ``{status, version, registry, helpers_image, ...}``: ``join`` asks it
  first, to tell a wrong URL or a portal that is down from a refused token;
- ``POST /api/nodes/enroll`` ``{join_token, public_jwk, name, cpu, memory_mb}`` -> 201
  ``{node_id, cluster_id, queue_url, events_queue_url, helpers_image}``
- ``POST /api/nodes/{id}/credentials`` with ``Authorization: Bearer <node JWT>`` -> 200
  ``{access_key_id, secret_access_key, session_token, expiration, region, queue_url,
  events_queue_url, endpoint_url}``
- ``DELETE /api/nodes/{id}`` with the node's JWT -> 204: a node that just enrolled withdraws
  (``join`` failed after enrolment: no half-joined node stays in the portal);
- ``GET /registry/token?scope=repository:<repo>:pull`` with the node's JWT: a short-lived
  registry token (the helpers image's pull).
- ``POST /api/nodes/{id}/instances/{instance}/tunnel-token`` with ``Authorization: Bearer <node
  JWT>`` -> 200 ``{tunnel_token, expires_at}``: only for an instance placed on this node
- ``GET /api/nodes/{id}/instances`` with ``Authorization: Bearer <node JWT>`` -> 200
  ``{instances: [{id, state}]}``: what the control plane has placed on this node
- ``POST /api/nodes/{id}/instances/{instance}/storage`` with the same authorization and
  ``{ok, message, usage_bytes}`` -> 200, the instance's storage (``StorageAccess`` as JSON)
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp

from node_daemon.errors import PortalError
from protocol.errors import MessageError
from protocol.messages import StorageAccess, value_of
from protocol.states import InstanceState
from protocol.tokens import SigningKey, node_claims

DEFAULT_TIMEOUT = aiohttp.ClientTimeout(total=30, connect=10)


@dataclass(frozen=True)
class Enrolment:
    node_id: str
    cluster_id: str
    queue_url: str
    events_queue_url: str
    helpers_image: str | None = None


@dataclass(frozen=True)
class PortalHealth:
    version: str
    helpers_image: str | None


@dataclass(frozen=True)
class AwsCredentials:
    """Short-lived STS credentials scoped to this node's queues."""

    access_key_id: str
    secret_access_key: str
    session_token: str
    expiration: datetime
    region: str
    queue_url: str
    events_queue_url: str
    endpoint_url: str | None


def _require(body: Any, fields: tuple[str, ...], what: str) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise PortalError(f"{what}: the portal answered with something other than an object")
    missing = [f for f in fields if not isinstance(body.get(f), str) or not body[f]]
    if missing:
        raise PortalError(f"{what}: the portal's answer lacks {', '.join(missing)}")
    return body


def parse_expiration(text: str) -> datetime:
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise PortalError(f"credentials: expiration {text!r} is not an ISO 8601 time") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


class PortalClient:
    """Calls the portal at ``base_url`` over ``session`` (owned by the caller)."""

    def __init__(self, base_url: str, session: aiohttp.ClientSession) -> None:
        self._base = base_url.rstrip("/")
        self._session = session

    async def _post(self, path: str, body: dict[str, Any], what: str,
                    headers: dict[str, str] | None = None) -> Any:
        return await self._call("POST", path, body, what, headers)

    async def _call(self, method: str, path: str, body: dict[str, Any] | None, what: str,
                    headers: dict[str, str] | None = None, *, ok: tuple[int, ...] = ()) -> Any:
        """The answer's JSON (None when empty or not JSON); PortalError for a status >= 400
        not in ``ok``, or when the portal cannot be reached."""
        url = f"{self._base}{path}"
        try:
            async with self._session.request(method, url, json=body, headers=headers,
                                             timeout=DEFAULT_TIMEOUT) as response:
                try:
                    payload = await response.json(content_type=None)
                except ValueError:
                    payload = None
                if response.status >= 400 and response.status not in ok:
                    detail = ""
                    if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
                        detail = f": {payload['error'].get('message', '')}"
                    raise PortalError(f"{what} refused by {url} ({response.status}){detail}",
                                      status=response.status)
                return payload
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise PortalError(f"{what}: cannot reach {url}: {exc!r}") from None

    async def enroll(self, *, join_token: str, key: SigningKey, name: str, cpu: float,
                     memory_mb: int) -> Enrolment:
        body = await self._post(
            "/api/nodes/enroll",
            {"join_token": join_token, "public_jwk": key.public_jwk(), "name": name,
             "cpu": cpu, "memory_mb": memory_mb},
            "enrolment")
        fields = _require(body, ("node_id", "cluster_id", "queue_url", "events_queue_url"),
                          "enrolment")
        helpers = fields.get("helpers_image")
        return Enrolment(fields["node_id"], fields["cluster_id"], fields["queue_url"],
                         fields["events_queue_url"],
                         helpers if isinstance(helpers, str) and helpers else None)

    async def health(self) -> PortalHealth:
        """What the portal says of itself (a degraded portal still answers, 503)."""
        body = await self._call("GET", "/api/health", None, "health check", ok=(503,))
        if not isinstance(body, dict) or not isinstance(body.get("version"), str):
            raise PortalError(f"{self._base} is not a dit4c portal (GET /api/health gave no "
                              "version)", status=404)
        helpers = body.get("helpers_image")
        return PortalHealth(body["version"], helpers if isinstance(helpers, str) and helpers
                            else None)

    async def withdraw(self, node_id: str, key: SigningKey) -> None:
        token = key.sign(node_claims(node_id=node_id))
        await self._call("DELETE", f"/api/nodes/{node_id}", None, "withdrawal",
                         {"Authorization": f"Bearer {token}"})

    async def registry_token(self, node_id: str, key: SigningKey, repository: str) -> str:
        """A registry token for pulling ``repository``, as the node itself."""
        token = key.sign(node_claims(node_id=node_id))
        body = await self._call("GET", f"/registry/token?scope=repository:{repository}:pull",
                                None, "registry token", {"Authorization": f"Bearer {token}"})
        token_text: str = _require(body, ("token",), "registry token")["token"]
        return token_text

    async def credentials(self, node_id: str, key: SigningKey) -> AwsCredentials:
        body = await self._post(f"/api/nodes/{node_id}/credentials", {}, "credentials",
                                headers=_signed(node_id, key))
        fields = _require(body, ("access_key_id", "secret_access_key", "session_token",
                                 "expiration", "region", "queue_url", "events_queue_url"),
                          "credentials")
        endpoint = fields.get("endpoint_url")
        return AwsCredentials(
            access_key_id=fields["access_key_id"],
            secret_access_key=fields["secret_access_key"],
            session_token=fields["session_token"],
            expiration=parse_expiration(fields["expiration"]),
            region=fields["region"],
            queue_url=fields["queue_url"],
            events_queue_url=fields["events_queue_url"],
            endpoint_url=endpoint if isinstance(endpoint, str) and endpoint else None,
        )

    async def tunnel_token(self, node_id: str, key: SigningKey, instance_id: str) -> str:
        """A renewed tunnel token for an instance placed on this node; PortalError (403) when
        it is not placed here (any more)."""
        body = await self._post(f"/api/nodes/{node_id}/instances/{instance_id}/tunnel-token",
                                {}, "tunnel token renewal", headers=_signed(node_id, key))
        return str(_require(body, ("tunnel_token",), "tunnel token renewal")["tunnel_token"])

    async def storage(self, node_id: str, key: SigningKey, instance_id: str, *, ok: bool,
                      message: str | None, usage_bytes: int | None) -> StorageAccess:
        """Renewed storage for an instance this node runs, reporting its helper's health."""
        body = await self._post(f"/api/nodes/{node_id}/instances/{instance_id}/storage",
                                {"ok": ok, "message": message, "usage_bytes": usage_bytes},
                                "storage", headers=_signed(node_id, key))
        try:
            return value_of(StorageAccess, body)
        except MessageError as exc:
            raise PortalError(f"storage: the portal's answer is not storage: {exc}") from None

    async def placed(self, node_id: str, key: SigningKey) -> dict[str, InstanceState]:
        """What the control plane has placed on this node: instance id -> its state there."""
        body = await self._call("GET", f"/api/nodes/{node_id}/instances", None,
                                "placed instances", headers=_signed(node_id, key))
        try:
            return {str(i["id"]): InstanceState(i["state"]) for i in body["instances"]}
        except (TypeError, KeyError, ValueError):
            raise PortalError("placed instances: the portal's answer is not a list of "
                              "{id, state}") from None


def _signed(node_id: str, key: SigningKey) -> dict[str, str]:
    """A fresh node token (each is good for one call)."""
    return {"Authorization": f"Bearer {key.sign(node_claims(node_id=node_id))}"}
