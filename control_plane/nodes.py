"""Clusters, join tokens and nodes (ClustersTable, TokensTable, NodesTable, per-node SQS queues).

Join tokens are random, shown once, stored as ``join:<sha256>`` with an expiry, and consumed by a
conditional delete: two enrolments with the same token cannot both succeed.

A node's credentials call carries a JWT the node signed with the key it registered
(:func:`protocol.tokens.verify_node`: at most five minutes of life); its ``jti`` is recorded with a
conditional put, so a replayed token is refused. The STS credentials returned carry a session
policy naming only that node's queue (receive/delete) and the events queue (send).

Capacity is kept in integer millicores and MB (``cpu_milli_*``, ``memory_mb_*``): reservations
are conditional updates, and DynamoDB conditions cannot do arithmetic on floats reliably.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from control_plane import validate
from control_plane.clock import now_iso
from control_plane.config import Config
from control_plane.errors import BadRequest, Conflict, Forbidden, NotFound, Unauthorized
from control_plane.table import ConditionFailed, Item, Table
from protocol.errors import TokenError
from protocol.tokens import KeySet, load_public_jwk, thumbprint, verify_node

ACTIVE = "active"
DRAINING = "draining"
DECOMMISSIONED = "decommissioned"
CLUSTER_KIND = "cluster"
"""The by-kind index's partition for every cluster item."""
NODE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


def milli(cpu: float) -> int:
    return round(cpu * 1000)


def node_json(item: Item, now: float | None = None) -> dict[str, Any]:
    now = time.time() if now is None else now
    beat = item.get("last_heartbeat")
    return {
        "id": item["node_id"],
        "cluster_id": item["cluster_id"],
        "name": item.get("name", ""),
        "state": item.get("status", ACTIVE),
        "cpu_total": item["cpu_milli_total"] / 1000,
        "memory_mb_total": item["memory_mb_total"],
        "cpu_reserved": item.get("cpu_milli_reserved", 0) / 1000,
        "memory_mb_reserved": item.get("memory_mb_reserved", 0),
        "cpu_used": item.get("cpu_used", 0),
        "memory_mb_used": item.get("memory_mb_used", 0),
        "load": item.get("load", 0),
        "running": item.get("running", []),
        "version": item.get("daemon_version"),
        "enrolled_at": item.get("enrolled_at"),
        "heartbeat_age_seconds": None if beat is None else max(0, round(now - beat, 1)),
    }


class Nodes:
    def __init__(self, *, config: Config, clusters: Table, nodes: Table, tokens: Table,
                 sqs: Any, sts: Any) -> None:
        self.config = config
        self.clusters = clusters
        self.nodes = nodes
        self.tokens = tokens
        self.sqs = sqs
        self.sts = sts

    # --- clusters ---------------------------------------------------------------------

    def create_cluster(self, name: str, *, cluster_id: str | None = None) -> dict[str, Any]:
        item = {"cluster_id": cluster_id or secrets.token_hex(8), "name": name,
                "kind": CLUSTER_KIND, "created_at": now_iso()}
        try:
            self.clusters.put(item, condition="attribute_not_exists(cluster_id)")
        except ConditionFailed:
            # Already there; make sure it is listed (clusters made before the by-kind index
            # carry no kind).
            existing = self.clusters.update(
                {"cluster_id": item["cluster_id"]},
                "SET #k = :k, created_at = if_not_exists(created_at, :t)",
                names={"#k": "kind"}, vals={":k": CLUSTER_KIND, ":t": item["created_at"]})
            return _cluster_json(existing)
        return _cluster_json(item)

    def get_cluster(self, cluster_id: str) -> Item:
        item = self.clusters.get({"cluster_id": validate.ident(cluster_id, "cluster")},
                                 consistent=False)
        if item is None:
            raise NotFound(f"no cluster {cluster_id!r}")
        return item

    def all_clusters(self) -> Iterator[Item]:
        """Every cluster, oldest first: one Query of the by-kind index."""
        return self.clusters.query("#k = :k", index="by-kind", names={"#k": "kind"},
                                   vals={":k": CLUSTER_KIND})

    def list_clusters(self) -> list[dict[str, Any]]:
        return [_cluster_json(i) for i in self.all_clusters()]

    def create_join_token(self, cluster_id: str) -> dict[str, Any]:
        self.get_cluster(cluster_id)
        token = "djt_" + secrets.token_urlsafe(32)
        expires = int(time.time()) + self.config.join_token_seconds
        self.tokens.put({"token_key": "join:" + _digest(token), "cluster_id": cluster_id,
                         "expires_at": expires})
        return {"token": token, "cluster_id": cluster_id,
                "expires_at": datetime.fromtimestamp(expires, UTC).isoformat()}

    # --- enrolment --------------------------------------------------------------------

    def enroll(self, body: dict[str, Any]) -> dict[str, Any]:
        token = validate.string(body, "join_token", max_len=200)
        jwk = body.get("public_jwk")
        if not isinstance(jwk, dict):
            raise BadRequest("'public_jwk' must be a JWK object")
        try:
            load_public_jwk(jwk)
            kid = thumbprint(jwk)
        except TokenError as exc:
            raise BadRequest(f"public_jwk: {exc}") from None
        name = validate.string(body, "name", max_len=63)
        if not NODE_NAME.match(name):
            raise BadRequest("'name' must be letters, digits, '_', '.', '-'")
        cpu = validate.number(body, "cpu")
        memory = validate.integer(body, "memory_mb", low=64, high=validate.MAX_MEMORY_MB)
        try:
            grant = self.tokens.delete({"token_key": "join:" + _digest(token)},
                                       condition="attribute_exists(token_key)")
        except ConditionFailed:
            raise Unauthorized("join token is unknown or already used") from None
        if grant is None or grant["expires_at"] < time.time():
            raise Unauthorized("join token expired")
        node_id = secrets.token_hex(8)
        queue_url, queue_arn = self._make_queue(node_id)
        item = {"node_id": node_id, "cluster_id": grant["cluster_id"], "name": name,
                "public_jwk": {k: v for k, v in jwk.items()
                               if k in ("kty", "crv", "x", "y", "n", "e")},
                "kid": kid, "queue_url": queue_url, "queue_arn": queue_arn,
                "cpu_milli_total": milli(cpu), "memory_mb_total": memory,
                "cpu_milli_reserved": 0, "memory_mb_reserved": 0, "status": ACTIVE,
                "enrolled_at": now_iso(), "last_heartbeat": time.time()}
        self.nodes.put(item)
        return {"node_id": node_id, "cluster_id": grant["cluster_id"], "queue_url": queue_url,
                "events_queue_url": self.config.events_queue_url}

    def _make_queue(self, node_id: str) -> tuple[str, str]:
        redrive = {"deadLetterTargetArn": self.config.node_commands_dlq_arn,
                   "maxReceiveCount": "5"}
        url: str = self.sqs.create_queue(
            QueueName=f"{self.config.node_queue_prefix}{node_id}",
            Attributes={"RedrivePolicy": json.dumps(redrive), "VisibilityTimeout": "60",
                        "MessageRetentionPeriod": "86400", "SqsManagedSseEnabled": "true"},
            tags={"dit4c:node": node_id})["QueueUrl"]
        arn: str = self.sqs.get_queue_attributes(
            QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        return url, arn

    # --- credentials ------------------------------------------------------------------

    def authenticate(self, node_id: str, authorization: str | None) -> Item:
        """The node that signed ``Authorization: Bearer <node token>`` (its own key, not
        replayed, not decommissioned), or Unauthorized/Forbidden."""
        if not authorization or not authorization.startswith("Bearer "):
            raise Unauthorized("send 'Authorization: Bearer <node token>'")
        token = authorization[len("Bearer "):].strip()
        node = self.nodes.get({"node_id": validate.ident(node_id, "node")})
        if node is None:
            raise Unauthorized("unknown node")
        try:
            keys = KeySet({node["kid"]: load_public_jwk(node["public_jwk"])})
            claims = verify_node(token, keys, node_id=node_id)
        except TokenError as exc:
            raise Unauthorized(str(exc)) from None
        if node.get("status") == DECOMMISSIONED:
            raise Forbidden("node is decommissioned")
        try:
            self.tokens.put({"token_key": f"jti:{node_id}:{claims['jti']}",
                             "expires_at": int(claims["exp"]) + 60},
                            condition="attribute_not_exists(token_key)")
        except ConditionFailed:
            raise Unauthorized("token already used (replayed jti)") from None
        return node

    def credentials(self, node_id: str, authorization: str | None) -> dict[str, Any]:
        node = self.authenticate(node_id, authorization)
        policy = {"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow",
             "Action": ["sqs:ReceiveMessage", "sqs:DeleteMessage",
                        "sqs:ChangeMessageVisibility", "sqs:GetQueueAttributes"],
             "Resource": node["queue_arn"]},
            {"Effect": "Allow", "Action": "sqs:SendMessage",
             "Resource": self.config.events_queue_arn},
        ]}
        creds = self.sts.assume_role(
            RoleArn=self.config.node_role_arn, RoleSessionName=f"dit4c-node-{node_id}",
            Policy=json.dumps(policy), DurationSeconds=self.config.node_credentials_seconds,
        )["Credentials"]
        expiration = creds["Expiration"]
        return {"access_key_id": creds["AccessKeyId"],
                "secret_access_key": creds["SecretAccessKey"],
                "session_token": creds["SessionToken"],
                "expiration": expiration.isoformat() if hasattr(expiration, "isoformat")
                else str(expiration),
                "region": self.config.region, "queue_url": node["queue_url"],
                "events_queue_url": self.config.events_queue_url,
                "endpoint_url": self.config.aws_endpoint_url}

    # --- administration ---------------------------------------------------------------

    def get(self, node_id: str) -> Item:
        item = self.nodes.get({"node_id": validate.ident(node_id, "node")})
        if item is None:
            raise NotFound(f"no node {node_id!r}")
        return item

    def in_cluster(self, cluster_id: str) -> list[Item]:
        return list(self.nodes.query("cluster_id = :c", index="by-cluster",
                                     vals={":c": cluster_id}))

    def set_status(self, node_id: str, status: str) -> Item:
        """Drain (no new placements) or decommission (also refuses credentials)."""
        self.get(node_id)
        allowed = {DRAINING: (ACTIVE, DRAINING), ACTIVE: (ACTIVE, DRAINING),
                   DECOMMISSIONED: (ACTIVE, DRAINING, DECOMMISSIONED)}[status]
        try:
            return self.nodes.update(
                {"node_id": node_id}, "SET #s = :s",
                condition="#s IN (" + ", ".join(f":a{i}" for i in range(len(allowed))) + ")",
                names={"#s": "status"},
                vals={":s": status, **{f":a{i}": a for i, a in enumerate(allowed)}})
        except ConditionFailed:
            raise Conflict(f"node {node_id} is decommissioned") from None

    def heartbeat(self, node_id: str, *, sent_at: str, version: str, cpu_total: float,
                  memory_mb_total: int, cpu_used: float, memory_mb_used: int, load: float,
                  running: list[str]) -> bool:
        """Apply a heartbeat unless a newer one was applied already; False when ignored."""
        try:
            self.nodes.update(
                {"node_id": node_id},
                "SET last_heartbeat = :now, heartbeat_sent_at = :s, daemon_version = :v, "
                "cpu_milli_total = :ct, memory_mb_total = :mt, cpu_used = :cu, "
                "memory_mb_used = :mu, #l = :l, running = :r",
                condition="attribute_exists(node_id) AND (attribute_not_exists(heartbeat_sent_at)"
                          " OR heartbeat_sent_at < :s)",
                names={"#l": "load"},
                vals={":now": time.time(), ":s": sent_at, ":v": version,
                      ":ct": milli(cpu_total), ":mt": memory_mb_total, ":cu": cpu_used,
                      ":mu": memory_mb_used, ":l": load, ":r": running})
        except ConditionFailed:
            return False
        return True


def _cluster_json(item: Item) -> dict[str, Any]:
    return {"id": item["cluster_id"], "name": item.get("name", ""),
            "created_at": item.get("created_at")}


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
