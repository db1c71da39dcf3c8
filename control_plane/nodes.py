"""Clusters, join tokens and nodes (ClustersTable, TokensTable, NodesTable, per-node SQS queues).

Join tokens are random, shown once, stored as ``join:<sha256>`` with an expiry, and consumed by a
conditional delete: two enrolments with the same token cannot both succeed.

A node's calls (credentials, its placed instances) carry a JWT the node signed with the key it
registered (:func:`protocol.tokens.verify_node`: at most five minutes of life); its ``jti`` is
recorded with a conditional put, so a replayed token is refused. The STS credentials returned
carry a session policy naming only that node's queue (receive/delete) and the events queue
(send).

The events queue is shared by every node, so its messages are bound to their sender by the
node's signature on each body (:meth:`Nodes.event_sender`, ``protocol.tokens.verify_event``),
checked against the key the node enrolled and its current status. Decommissioning revokes at
once what a node's credentials still allow: its queue is deleted (nothing left to receive) and
its signed events are refused from then on; the credentials themselves are never renewed.

A node's capacity is what it declared at enrolment (made with an admin's join token, shown in
the node list): heartbeats may report less, never more, so a node cannot claim room it was not
enrolled with to attract placements.

Capacity is kept in integer millicores and MB (``cpu_milli_*``, ``memory_mb_*``): reservations
are conditional updates, and DynamoDB conditions cannot do arithmetic on floats reliably.

Enrolling a node, and a silent node asking for credentials (it is back: that counts as hearing
from it), wake the reaper and with it the events trigger (:mod:`control_plane.standby`): while
no node runs they are off, so a returning node's heartbeats would otherwise wait unread.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import secrets
import shlex
import time
from collections.abc import Iterator
from typing import Any

from control_plane.bodies import ClusterAccess, Enroll
from control_plane.clock import now_iso
from control_plane.config import Config
from control_plane.errors import BadRequest, Conflict, Forbidden, NotFound, Unauthorized
from control_plane.records import CLUSTER_KIND, JOIN_PREFIX, Cluster, JoinGrant, Node, NodeStatus
from control_plane.replies import Credentials, Enrolled, JoinToken, JoinTokenInfo
from control_plane.standby import Standby
from control_plane.table import ConditionFailed, Table
from protocol.errors import TokenError
from protocol.ids import is_id, new_id
from protocol.messages import NodeHeartbeat
from protocol.tokens import KeySet, load_public_jwk, thumbprint, verify_event, verify_node

N = NodeStatus
ASK_AGAIN = "ask an admin for a new join command (portal: Nodes, New join token)"
ALLOWED_FROM = {N.ACTIVE: (N.ACTIVE, N.DRAINING), N.DRAINING: (N.ACTIVE, N.DRAINING),
                N.DECOMMISSIONED: (N.ACTIVE, N.DRAINING, N.DECOMMISSIONED)}
"""The statuses a node may be set to each status from (decommissioned is for good)."""


def milli(cpu: float) -> int:
    return round(cpu * 1000)


class Nodes:
    def __init__(self, *, config: Config, clusters: Table, nodes: Table, tokens: Table,
                 sqs: Any, sts: Any, standby: Standby) -> None:
        self.config = config
        self.clusters = clusters
        self.nodes = nodes
        self.tokens = tokens
        self.sqs = sqs
        self.sts = sts
        self.standby = standby

    # --- clusters ---------------------------------------------------------------------

    def create_cluster(self, name: str, *, cluster_id: str | None = None, public: bool = True,
                       users: list[str] | None = None) -> Cluster:
        cluster = Cluster(cluster_id=cluster_id or new_id(), name=name, created_at=now_iso(),
                          public=public, users=sorted(set(users or [])))
        try:
            self.clusters.put(cluster.to_item(), condition="attribute_not_exists(cluster_id)")
        except ConditionFailed:
            # Already there; make sure it is listed (clusters made before the by-kind index
            # carry no kind).
            return Cluster.from_item(self.clusters.update(
                {"cluster_id": cluster.cluster_id},
                "SET #k = :k, created_at = if_not_exists(created_at, :t)",
                names={"#k": "kind"}, vals={":k": CLUSTER_KIND, ":t": cluster.created_at}))
        return cluster

    def get_cluster(self, cluster_id: str) -> Cluster:
        item = self.clusters.get({"cluster_id": cluster_id}, consistent=False) \
            if is_id(cluster_id) else None
        if item is None:
            raise NotFound(f"no cluster {cluster_id!r}")
        return Cluster.from_item(item)

    def set_access(self, cluster_id: str, access: ClusterAccess) -> Cluster:
        """Who may launch into the cluster from now on (instances already there stay)."""
        try:
            return Cluster.from_item(self.clusters.update(
                {"cluster_id": cluster_id}, "SET #p = :p, #u = :u",
                condition="attribute_exists(cluster_id)", names={"#p": "public", "#u": "users"},
                vals={":p": access.public, ":u": sorted(set(access.users))}))
        except ConditionFailed:
            raise NotFound(f"no cluster {cluster_id!r}") from None

    def usable_cluster(self, cluster_id: str, username: str, *, admin: bool) -> Cluster:
        """The cluster, if this user may launch into it: NotFound, or Forbidden."""
        cluster = self.get_cluster(cluster_id)
        if not cluster.admits(username, admin=admin):
            raise Forbidden(f"you may not launch into cluster {cluster_id!r}; ask an admin")
        return cluster

    def all_clusters(self) -> Iterator[Cluster]:
        """Every cluster, oldest first: one Query of the by-kind index."""
        for item in self.clusters.query("#k = :k", index="by-kind", names={"#k": "kind"},
                                        vals={":k": CLUSTER_KIND}):
            yield Cluster.from_item(item)

    # --- join tokens ------------------------------------------------------------------

    def create_join_token(self, cluster_id: str, *, hours: float | None = None,
                          created_by: str | None = None) -> JoinToken:
        """A one-time token to join ``cluster_id``, valid ``hours`` (default
        ``DIT4C_JOIN_TOKEN_HOURS``); the answer is the only place the token is ever shown."""
        self.get_cluster(cluster_id)
        token = "djt_" + secrets.token_urlsafe(32)
        seconds = round(hours * 3600) if hours is not None else self.config.join_token_seconds
        grant = JoinGrant(token_key=JOIN_PREFIX + _digest(token), cluster_id=cluster_id,
                          expires_at=int(time.time()) + seconds, created_at=now_iso(),
                          created_by=created_by)
        self.tokens.put(grant.to_item())
        info = JoinTokenInfo.of(grant)
        return JoinToken(**vars(info), token=token, command=self.join_command(token))

    def join_command(self, token: str) -> str:
        """The one line a self-hoster runs (docs/node-daemon.md): join with this portal's URL,
        the helpers image's digest pinned when the deployment publishes one, then run."""
        pin = ""
        if self.config.helpers_image:
            pin = f" --helpers-digest {self.config.helpers_image.rsplit('@', 1)[1]}"
        return (f"dit4c-node join --portal {shlex.quote(self.config.portal_url)} "
                f"--token {shlex.quote(token)}{pin} && dit4c-node run")

    def join_tokens(self, cluster_id: str) -> list[JoinGrant]:
        """The cluster's unused, unexpired join tokens, oldest first."""
        self.get_cluster(cluster_id)
        now = time.time()
        grants = [JoinGrant.from_item(i) for i in self.tokens.query(
            "cluster_id = :c", index="by-cluster", vals={":c": cluster_id})]
        # TTL deletion is lazy (up to days on AWS): an expired grant is simply not shown.
        return sorted((g for g in grants if g.expires_at >= now),
                      key=lambda g: (g.created_at or "", g.token_key))

    def revoke_join_token(self, cluster_id: str, token_id: str) -> None:
        """Delete the grant: a node that has not enrolled with it yet never will."""
        if not re.fullmatch(r"[0-9a-f]{64}", token_id):
            raise NotFound(f"no join token {token_id[:80]!r}")
        try:
            self.tokens.delete({"token_key": JOIN_PREFIX + token_id},
                               condition="cluster_id = :c", vals={":c": cluster_id})
        except ConditionFailed:
            raise NotFound(f"no unused join token {token_id} in cluster {cluster_id!r} "
                           "(used, expired or revoked already)") from None

    # --- enrolment --------------------------------------------------------------------

    def enroll(self, body: Enroll) -> Enrolled:
        jwk = body.public_jwk
        try:
            load_public_jwk(jwk)
            kid = thumbprint(jwk)
        except TokenError as exc:
            raise BadRequest(f"public_jwk: {exc}") from None
        try:
            item = self.tokens.delete({"token_key": JOIN_PREFIX + _digest(body.join_token)},
                                      condition="attribute_exists(token_key)")
        except ConditionFailed:
            raise Unauthorized(f"join token is unknown, used or revoked; {ASK_AGAIN}") from None
        grant = JoinGrant.from_item(item) if item else None
        if grant is None or grant.expires_at < time.time():
            raise Unauthorized(f"join token expired; {ASK_AGAIN}")
        node_id = new_id()
        queue_url, queue_arn = self._make_queue(node_id)
        self.nodes.put(Node(
            node_id=node_id, cluster_id=grant.cluster_id, name=body.name,
            public_jwk={k: v for k, v in jwk.items() if k in ("kty", "crv", "x", "y", "n", "e")},
            kid=kid, queue_url=queue_url, queue_arn=queue_arn,
            cpu_milli_total=milli(body.cpu), memory_mb_total=body.memory_mb,
            cpu_milli_enrolled=milli(body.cpu), memory_mb_enrolled=body.memory_mb,
            enrolled_at=now_iso(), last_heartbeat=time.time()).to_item())
        self.standby.wake()
        return Enrolled(node_id=node_id, cluster_id=grant.cluster_id, queue_url=queue_url,
                        events_queue_url=self.config.events_queue_url,
                        helpers_image=self.config.helpers_image or None)

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

    def authenticate(self, node_id: str, authorization: str | None) -> Node:
        """The node whose JWT (``Authorization: Bearer``) this is: signed by its registered
        key, for this node id, at most five minutes old, its ``jti`` never seen before, the
        node not decommissioned. Unauthorized or Forbidden otherwise."""
        if not authorization or not authorization.startswith("Bearer "):
            raise Unauthorized("send 'Authorization: Bearer <node token>'")
        token = authorization[len("Bearer "):].strip()
        node = self.find(node_id, consistent=True)
        if node is None:
            raise Unauthorized("unknown node")
        try:
            claims = verify_node(token, _keys(node), node_id=node_id)
        except TokenError as exc:
            raise Unauthorized(str(exc)) from None
        if node.status == N.DECOMMISSIONED:
            raise Forbidden("node is decommissioned")
        try:
            self.tokens.put({"token_key": f"jti:{node_id}:{claims['jti']}",
                             "expires_at": int(claims["exp"]) + 60},
                            condition="attribute_not_exists(token_key)")
        except ConditionFailed:
            raise Unauthorized("token already used (replayed jti)") from None
        return node

    def credentials(self, node_id: str, authorization: str | None) -> Credentials:
        node = self.authenticate(node_id, authorization)
        if time.time() - node.last_heartbeat > self.config.node_silent_seconds:
            self._back(node_id)
        policy = {"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow",
             "Action": ["sqs:ReceiveMessage", "sqs:DeleteMessage",
                        "sqs:ChangeMessageVisibility", "sqs:GetQueueAttributes"],
             "Resource": node.queue_arn},
            {"Effect": "Allow", "Action": "sqs:SendMessage",
             "Resource": self.config.events_queue_arn},
        ]}
        creds = self.sts.assume_role(
            RoleArn=self.config.node_role_arn, RoleSessionName=f"dit4c-node-{node_id}",
            Policy=json.dumps(policy), DurationSeconds=self.config.node_credentials_seconds,
        )["Credentials"]
        expiration = creds["Expiration"]
        return Credentials(
            access_key_id=creds["AccessKeyId"], secret_access_key=creds["SecretAccessKey"],
            session_token=creds["SessionToken"],
            expiration=expiration.isoformat() if hasattr(expiration, "isoformat")
            else str(expiration),
            region=self.config.region, queue_url=node.queue_url,
            events_queue_url=self.config.events_queue_url,
            endpoint_url=self.config.aws_endpoint_url)

    def _back(self, node_id: str) -> None:
        """A node thought silent proved it runs: heard from now, and the reaper wakes (its
        heartbeats may sit unread while everything is off)."""
        self.nodes.update({"node_id": node_id}, "SET last_heartbeat = :now",
                          condition="attribute_exists(node_id)", vals={":now": time.time()})
        self.standby.wake()

    def event_sender(self, node_id: str, body: str, signature: str | None) -> Node:
        """The node that signed this events-queue ``body`` (the message names ``node_id``):
        Unauthorized when unknown, unsigned or signed by another key; Forbidden when
        decommissioned. Read consistently: a decommission counts from the moment it is made."""
        node = self.find(node_id, consistent=True)
        if node is None:
            raise Unauthorized(f"unknown node {node_id!r}")
        if not signature:
            raise Unauthorized("the event is not signed")
        try:
            verify_event(signature, _keys(node), node_id=node_id, body=body)
        except TokenError as exc:
            raise Unauthorized(f"event signature refused: {exc}") from None
        if node.status == N.DECOMMISSIONED:
            raise Forbidden(f"node {node_id} is decommissioned")
        return node

    # --- administration ---------------------------------------------------------------

    def find(self, node_id: str, *, consistent: bool = False) -> Node | None:
        """The node, or None (also for anything that cannot be a node id)."""
        item = self.nodes.get({"node_id": node_id}, consistent=consistent) \
            if is_id(node_id) else None
        return Node.from_item(item) if item else None

    def get(self, node_id: str) -> Node:
        node = self.find(node_id, consistent=True)
        if node is None:
            raise NotFound(f"no node {node_id!r}")
        return node

    def in_cluster(self, cluster_id: str) -> list[Node]:
        return [Node.from_item(i) for i in self.nodes.query(
            "cluster_id = :c", index="by-cluster", vals={":c": cluster_id})]

    def set_status(self, node_id: str, status: NodeStatus) -> Node:
        """Drain (no new placements) or decommission (for good: see the module docstring)."""
        self.get(node_id)
        allowed = ALLOWED_FROM[status]
        try:
            node = Node.from_item(self.nodes.update(
                {"node_id": node_id}, "SET #s = :s",
                condition="#s IN (" + ", ".join(f":a{i}" for i in range(len(allowed))) + ")",
                names={"#s": "status"},
                vals={":s": status.value, **{f":a{i}": a.value for i, a in enumerate(allowed)}}))
        except ConditionFailed:
            raise Conflict(f"node {node_id} is decommissioned") from None
        if status == N.DECOMMISSIONED:
            self._delete_queue(node)
        return node

    def withdraw(self, node_id: str, authorization: str | None) -> None:
        """The node itself leaves, right after enrolling (its ``join`` failed later on: no
        half-joined node stays listed). Only while nothing was ever placed on it."""
        node = self.authenticate(node_id, authorization)
        try:
            self.nodes.delete({"node_id": node_id},
                              condition="attribute_not_exists(running) AND "
                                        "cpu_milli_reserved = :z AND memory_mb_reserved = :z",
                              vals={":z": 0})
        except ConditionFailed:
            raise Conflict(f"node {node_id} has run instances: an admin decommissions it") \
                from None
        self._delete_queue(node)

    def _delete_queue(self, node: Node) -> None:
        """Credentials already issued still name this queue: without it they receive nothing.
        Deleting it again (a second decommission) is fine."""
        with contextlib.suppress(self.sqs.exceptions.QueueDoesNotExist):
            self.sqs.delete_queue(QueueUrl=node.queue_url)

    def heartbeat(self, node: Node, beat: NodeHeartbeat) -> Node | None:
        """Apply a heartbeat unless a newer one was applied already; returns the node as it is
        now, or None when the heartbeat was ignored. The capacity it reports counts up to what
        the node enrolled with."""
        # Nodes enrolled before the cap was kept: their capacity when the cap first applies.
        cpu_cap = node.cpu_milli_enrolled or node.cpu_milli_total
        memory_cap = node.memory_mb_enrolled or node.memory_mb_total
        try:
            item = self.nodes.update(
                {"node_id": node.node_id},
                "SET last_heartbeat = :now, heartbeat_sent_at = :s, daemon_version = :v, "
                "cpu_milli_total = :ct, memory_mb_total = :mt, cpu_used = :cu, "
                "memory_mb_used = :mu, #l = :l, running = :r, helpers = :h, "
                "cpu_milli_enrolled = if_not_exists(cpu_milli_enrolled, :cc), "
                "memory_mb_enrolled = if_not_exists(memory_mb_enrolled, :mc)",
                condition="attribute_exists(node_id) AND (attribute_not_exists(heartbeat_sent_at)"
                          " OR heartbeat_sent_at < :s)",
                names={"#l": "load"},
                vals={":now": time.time(), ":s": beat.sent_at, ":v": beat.version,
                      ":ct": min(milli(beat.cpu_total), cpu_cap),
                      ":mt": min(beat.memory_mb_total, memory_cap), ":cu": beat.cpu_used,
                      ":mu": beat.memory_mb_used, ":l": beat.load, ":r": beat.running,
                      ":h": beat.helpers,
                      ":cc": cpu_cap, ":mc": memory_cap})
        except ConditionFailed:
            return None
        return Node.from_item(item)

    def watch(self, node: Node, *, strays: dict[str, str], missing: dict[str, str]) -> None:
        """Keep what :mod:`control_plane.reconcile` is waiting out on ``node``: instance id ->
        since when (the node's clock). Only on an existing node; a lost race only delays a
        repair by one heartbeat."""
        if strays == (node.strays or {}) and missing == (node.missing or {}):
            return
        with contextlib.suppress(ConditionFailed):
            self.nodes.update({"node_id": node.node_id}, "SET strays = :s, #m = :m",
                              condition="attribute_exists(node_id)", names={"#m": "missing"},
                              vals={":s": strays, ":m": missing})


def _keys(node: Node) -> KeySet:
    """The one key a node proves itself with: the public key it enrolled."""
    return KeySet({node.kid: load_public_jwk(node.public_jwk)})


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
