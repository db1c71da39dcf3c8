"""The scheduled reaper: repairs what silent nodes and stuck transitions left behind.

- A node whose last heartbeat is older than ``node_silent_seconds``: its ``scheduled``
  instances go back to ``pending`` (and are placed again); its ``starting``, ``running`` and
  ``stopping`` instances fail with a reason naming the node.
- ``pending`` instances are placed again; past their deadline they fail ("no room").
- ``scheduled`` past the deadline: placed again elsewhere (at most ``MAX_ATTEMPTS``), then fail.
- ``starting``/``stopping`` past the deadline fail; ``saving`` past it returns to ``stopped``.

Failing is :meth:`control_plane.reconcile.Reconciler.fail`: routes revoked, OAuth client
forgotten, the node told to discard. What a live node runs against the records is reconciled at
each of its heartbeats (:mod:`control_plane.reconcile`), not here.

Every move is the same conditional write as everywhere else, so a reaper racing an event or
another reaper changes nothing twice. Finding work uses the by-cluster, by-node and sparse
by-transition indexes, and the clusters through their by-kind index: no Scan anywhere.

Each run ends by settling the standby (:mod:`control_plane.standby`): with no live node and no
instance in transition left, the reaper turns the events trigger and its own schedule off.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

from control_plane.clock import now_iso
from control_plane.instances import Instances
from control_plane.nodes import Nodes
from control_plane.reconcile import Reconciler
from control_plane.records import Instance, Node, NodeStatus
from control_plane.scheduler import Scheduler
from control_plane.standby import Standby
from control_plane.table import ConditionFailed
from protocol.states import InstanceState

log = logging.getLogger("dit4c.control_plane.reaper")
S = InstanceState
MAX_ATTEMPTS = 3


class Reaper:
    def __init__(self, instances: Instances, nodes: Nodes, scheduler: Scheduler,
                 reconciler: Reconciler, standby: Standby, *, node_silent_seconds: int,
                 transition_timeout: int) -> None:
        self.instances = instances
        self.nodes = nodes
        self.scheduler = scheduler
        self.reconciler = reconciler
        self.standby = standby
        self.silent = node_silent_seconds
        self.timeout = transition_timeout

    def run(self) -> dict[str, Any]:
        report: dict[str, Any] = {"silent_nodes": [], "replaced": [], "failed": [],
                                  "placed": []}
        live = False
        for node in self._nodes():
            if self._gone(node):
                if self._lost_node(node, report):
                    report["silent_nodes"].append(node.node_id)
            else:
                live = True
        deadline = now_iso()
        for instance_id in self.instances.in_transition(S.PENDING):
            self._pending(instance_id, deadline, report)
        for state in (S.SCHEDULED, S.STARTING, S.STOPPING, S.SAVING):
            for instance_id in self.instances.in_transition(state, before=deadline):
                self._stuck(instance_id, report)
        report["standby"] = self.standby.settle(
            live or self.instances.any_in_transition(), self.has_work)
        return report

    def has_work(self) -> bool:
        """A node that is neither decommissioned nor silent, or an instance in transition."""
        return (any(not self._gone(node) for node in self._nodes())
                or self.instances.any_in_transition())

    def _nodes(self) -> Iterator[Node]:
        for cluster in self.nodes.all_clusters():
            yield from self.nodes.in_cluster(cluster.cluster_id)

    def _gone(self, node: Node) -> bool:
        silent = time.time() - node.last_heartbeat > self.silent
        return silent or node.status == NodeStatus.DECOMMISSIONED

    def _lost_node(self, node: Node, report: dict[str, Any]) -> bool:
        touched = False
        name = node.name or node.node_id
        for item in self.instances.on_node(node.node_id):
            state = item.state
            if state == S.SCHEDULED:
                touched |= self._try(functools.partial(
                    self.scheduler.release_and_repend, item,
                    f"node {name} stopped responding; placing again"), report, "replaced", item)
            elif state in (S.STARTING, S.RUNNING, S.STOPPING):
                touched |= self._fail(item, f"node {name} stopped responding", report)
        return touched

    def _pending(self, instance_id: str, deadline: str, report: dict[str, Any]) -> None:
        item = self.instances.get(instance_id)
        if item is None or item.state != S.PENDING:
            return
        placed = self.scheduler.place(item)
        if placed.state == S.SCHEDULED:
            report["placed"].append(instance_id)
        elif placed.state == S.PENDING and (placed.transition_deadline or "") < deadline:
            self._fail(placed, f"no node in cluster {item.cluster_id} had room for "
                               f"{item.cpu:g} CPU and {item.memory_mb} MB in time", report)

    def _stuck(self, instance_id: str, report: dict[str, Any]) -> None:
        item = self.instances.get(instance_id)
        if item is None or (item.transition_deadline or "9") >= now_iso():
            return
        state = item.state
        minutes = max(1, self.timeout // 60)
        if state == S.SCHEDULED:
            if item.attempts >= MAX_ATTEMPTS:
                self._fail(item, f"no node started the instance after {MAX_ATTEMPTS} tries",
                           report)
            else:
                self._try(lambda: self.scheduler.release_and_repend(
                    item, "the node did not pick the instance up; placing again"),
                    report, "replaced", item)
        elif state == S.STARTING:
            self._fail(item, f"the instance did not start within {minutes} minutes", report)
        elif state == S.STOPPING:
            self._fail(item, f"the node did not confirm the stop within {minutes} minutes",
                       report)
        elif state == S.SAVING:
            self._try(lambda: self.instances.transition(item, replace(
                item, state=S.STOPPED, reason=f"saving did not finish within {minutes} "
                                              "minutes; the instance is stopped")),
                report, "failed", item)

    def _fail(self, item: Instance, reason: str, report: dict[str, Any]) -> bool:
        if self.reconciler.fail(item, reason):
            report["failed"].append(item.instance_id)
            return True
        return False

    @staticmethod
    def _try(action: Callable[[], object], report: dict[str, Any], key: str,
             item: Instance) -> bool:
        try:
            action()
        except ConditionFailed:
            return False  # someone else moved it: their move wins
        report[key].append(item.instance_id)
        return True
