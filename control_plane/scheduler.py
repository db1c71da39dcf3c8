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
from control_plane.instance_clients import ClientRegistrar
from control_plane.instances import Instances
from control_plane.keys import KeyStore
from control_plane.messaging import Messenger
from control_plane.nodes import Nodes, milli
from control_plane.records import UNPLACED, Instance, Node, NodeStatus
from control_plane.storage import StorageUnavailable, UserStorage
from control_plane.table import ConditionFailed
from protocol import pod
from protocol.messages import DiscardInstance, OAuthClient, StartInstance
from protocol.states import InstanceState
from protocol.tokens import tunnel_claims

log = logging.getLogger("dit4c.control_plane.scheduler")
S = InstanceState


class Scheduler:
    def __init__(self, *, config: Config, instances: Instances, nodes: Nodes, keys: KeyStore,
                 messenger: Messenger, registrar: ClientRegistrar,
                 storage: UserStorage | None = None) -> None:
        self.config = config
        self.storage = storage
        self.instances = instances
        self.nodes = nodes
        self.keys = keys
        self.messenger = messenger
        self.registrar = registrar

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
        token = self.keys.sign(tunnel_claims(issuer=self.config.portal_url,
                                             instance_id=instance_id, hostname=hostname))
        return StartInstance(
            instance_id=instance_id, image=item.image, port=item.port,
            cpu=item.cpu, memory_mb=item.memory_mb, hostname=hostname, url=url,
            tunnel_token=token, router_urls=list(self.config.router_tunnel_urls),
            oauth=OAuthClient(
                client_id=client_id, client_secret=secret,
                authorize_url=f"{self.config.portal_url}/oauth/authorize",
                token_url=f"{self.config.pod_portal_url}/oauth/token",
                jwks_url=f"{self.config.pod_portal_url}/.well-known/jwks.json"),
            storage=self.storage.access_for(item.owner)
            if self.storage is not None and self.storage.enabled else None,
        )

    def release_and_repend(self, item: Instance, reason: str) -> Instance:
        """A scheduled instance whose node is gone goes back to pending (room released).

        The old node is told to discard the instance, so that a pod it may still start when it
        comes back never serves the instance beside its new placement.
        """
        moved = self.instances.transition(item, replace(
            item, state=S.PENDING, reason=reason, node_id=UNPLACED, node_queue_url=None))
        if item.node_queue_url:
            self.messenger.send(item.node_queue_url, DiscardInstance(instance_id=item.instance_id))
        return moved
