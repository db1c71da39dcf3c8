"""Placement: choose a node with room, reserve it, and send the node a complete ``start_instance``.

A placement is one DynamoDB transaction of two conditional updates: the node's reserved room
grows only if the room is still there (and the node still active), and the instance moves
``pending -> scheduled`` only if nobody else moved it. Two launches can therefore never
over-commit a node, and one instance can never be placed twice.

Candidates are the cluster's active nodes whose last heartbeat is recent, most free memory first
(spreading load); a lost race on one node moves on to the next.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace

from control_plane.config import Config
from control_plane.errors import Forbidden
from control_plane.instance_clients import ClientRegistrar
from control_plane.instances import Instances
from control_plane.keys import KeyStore
from control_plane.messaging import Messenger
from control_plane.nodes import Nodes, milli
from control_plane.records import UNPLACED, Instance, Node, NodeStatus
from control_plane.registry import JOB_TOKEN_LIFETIME, RegistryTokens
from control_plane.storage import StorageUnavailable, UserStorage
from control_plane.table import ConditionFailed
from protocol import pod
from protocol.messages import DiscardInstance, OAuthClient, RegistryAccess, StartInstance
from protocol.registry import PULL, repository_access
from protocol.states import InstanceState
from protocol.tokens import tunnel_claims

log = logging.getLogger("dit4c.control_plane.scheduler")
S = InstanceState
RENEWABLE = frozenset({S.SCHEDULED, S.STARTING, S.RUNNING})
"""States in which the placed node may renew the instance's tunnel token."""


class Scheduler:
    def __init__(self, *, config: Config, instances: Instances, nodes: Nodes, keys: KeyStore,
                 messenger: Messenger, registrar: ClientRegistrar,
                 registry: RegistryTokens, storage: UserStorage | None = None) -> None:
        self.config = config
        self.storage = storage
        self.instances = instances
        self.nodes = nodes
        self.keys = keys
        self.messenger = messenger
        self.registrar = registrar
        self.registry = registry

    def candidates(self, instance: Instance) -> list[Node]:
        now = time.time()
        cpu, mem = milli(instance.cpu), instance.memory_mb
        fits = [n for n in self.nodes.in_cluster(instance.cluster_id)
                if n.status == NodeStatus.ACTIVE
                and now - n.last_heartbeat < self.config.node_silent_seconds
                and n.cpu_milli_total - n.cpu_milli_reserved >= cpu
                and n.memory_mb_total - n.memory_mb_reserved >= mem]
        return sorted(fits, key=lambda n: n.memory_mb_reserved - n.memory_mb_total)

    def place(self, item: Instance, candidates: list[Node] | None = None) -> Instance:
        """Try to place a pending instance; returns it scheduled, or still pending with a note.

        ``candidates`` (default: a fresh :meth:`candidates` read) may be stale: the conditional
        reservation refuses a node whose room went meanwhile.
        """
        for node in self.candidates(item) if candidates is None else candidates:
            try:
                placed = self.instances.transition(item, replace(
                    item, state=S.SCHEDULED, node_id=node.node_id,
                    node_queue_url=node.queue_url, reason=None, attempts=item.attempts + 1),
                    reserve_on=node)
            except ConditionFailed:
                fresh = self.instances.get(item.instance_id)
                if fresh is None or fresh.state != S.PENDING:
                    return fresh or item
                item = fresh
                continue
            log.info("placed %s on node %s", item.instance_id, node.node_id)
            try:
                start = self.start_message(placed)
            except StorageUnavailable as exc:
                # Nothing was sent: the node has nothing to start, and the room goes back.
                return self.instances.transition(placed, replace(
                    placed, state=S.FAILED, reason=exc.message))
            self.messenger.send(node.queue_url, start)
            return placed
        note = (f"waiting for a node in cluster {item.cluster_id} with room for "
                f"{item.cpu:g} CPU and {item.memory_mb} MB")
        if item.reason != note:
            try:
                item = self.instances.update(item, replace(item, reason=note))
            except ConditionFailed:
                return self.instances.get(item.instance_id) or item
        return item

    def start_message(self, item: Instance) -> StartInstance:
        instance_id = item.instance_id
        hostname = self.config.instance_hostname(instance_id)
        url = self.config.instance_url(instance_id)
        client_id, secret = self.registrar.register(
            instance_id=instance_id, owner=item.owner, redirect_uri=url + pod.CALLBACK_PATH)
        token = self.tunnel_token(instance_id)
        return StartInstance(
            instance_id=instance_id, image=item.image, port=item.port,
            cpu=item.cpu, memory_mb=item.memory_mb, hostname=hostname, url=url,
            tunnel_token=token, router_urls=list(self.config.router_tunnel_urls),
            oauth=OAuthClient(
                client_id=client_id, client_secret=secret,
                authorize_url=self.config.portal_url + pod.OAUTH_AUTHORIZE_PATH,
                token_url=f"{self.config.pod_portal_url}/oauth/token",
                jwks_url=f"{self.config.pod_portal_url}/.well-known/jwks.json"),
            registry=self.pull_access(item),
            storage=self.storage.access_for(item.owner)
            if self.storage is not None and self.storage.enabled else None,
        )

    def tunnel_token(self, instance_id: str) -> str:
        """A fresh tunnel token for the instance's host (at a start, and when its node renews
        it: :meth:`renew_tunnel_token`)."""
        return self.keys.sign(tunnel_claims(
            issuer=self.config.portal_url, instance_id=instance_id,
            hostname=self.config.instance_hostname(instance_id),
            lifetime=self.config.tunnel_token_seconds))

    def renew_tunnel_token(self, node: Node, instance_id: str) -> str:
        """A fresh tunnel token for an instance placed on ``node`` (and live there); Forbidden
        for any other, whether it exists or not: a node that lost an instance (placed again
        elsewhere, stopped, failed) gets no token for it, so the one it holds runs out."""
        item = self.instances.get(instance_id)
        if item is None or item.node_id != node.node_id or item.state not in RENEWABLE:
            raise Forbidden(f"instance {instance_id} is not placed on node {node.node_id}")
        return self.tunnel_token(instance_id)
    def pull_access(self, item: Instance) -> RegistryAccess | None:
        """A token for the node to pull the instance's image, when it is on the image server
        (the launch itself checked that the user may use the image)."""
        repository = self.registry.repository_of(item.image)
        if repository is None:
            return None
        token = self.registry.token(f"node:{item.placed_on}",
                                    [repository_access(repository, PULL)],
                                    lifetime=JOB_TOKEN_LIFETIME)
        return RegistryAccess(registry=self.config.registry, token=token)

    def retire(self, instance_id: str, hostname: str, reason: str) -> None:
        """Undo what :meth:`start_message` issued, for an instance that will never run again
        (failed, discarded, deleted, or a stray no record places anywhere): routers drop its
        route and its OAuth2 client goes, so neither the tunnel token nor the client secret the
        node held opens anything."""
        self.registrar.forget(instance_id)
        self.messenger.revoke(instance_id, hostname, reason)

    def release_and_repend(self, item: Instance, reason: str) -> Instance:
        """A scheduled instance whose node is gone goes back to pending (room released).

        The old node is told to discard the instance, so that a pod it may still start when it
        comes back never serves the instance beside its new placement; and the old placement's
        tunnel token is revoked, so that whoever holds it cannot take the new pod's tunnels
        (the new placement's token is issued after the revocation, and passes).
        """
        moved = self.instances.transition(item, replace(
            item, state=S.PENDING, reason=reason, node_id=UNPLACED, node_queue_url=None))
        self.messenger.revoke(item.instance_id, item.hostname, "placed again")
        if item.node_queue_url:
            self.messenger.send(item.node_queue_url, DiscardInstance(instance_id=item.instance_id))
        return moved
