"""Reconciliation both ways, as JupyterHub's ``Proxy.check_routes`` does for its routes: what a
node says it runs against what the records say it should, at every heartbeat it sends.

- A **stray** is an instance the node reports running that the records do not have, have on
  another node, or have in a state where nothing runs (stopped, saved, discarded, failed,
  stopping, pending). Once the node has gone on reporting it for ``grace_seconds``, the node is
  told: ``stop_instance`` when the record is stopping or stopped (its container is kept: it
  may still be saved), ``discard_instance`` otherwise, and an instance that no longer exists
  (no record, discarded, failed) has its routes revoked and its OAuth client forgotten, so
  nobody can sign in to what is left of it. The command is repeated every ``grace_seconds``
  while the node still reports it (the first may have been lost with a queue or a crash).
- A **missing** instance is one the records have running on the node that its heartbeats have
  not listed for ``grace_seconds``, counted from the first heartbeat sent after the node
  reported it running: it fails with that reason, its route is revoked, its OAuth client
  forgotten, and the node is told to discard whatever it still holds of it.
- An **unstarted** instance is one scheduled on a node whose heartbeat says it holds no record
  of it (``holds``), ``grace_seconds`` after it was placed (or its start last sent): the start
  was lost. It is sent again, rather than waiting for the reaper's transition timeout. (A node
  that holds it but whose report was lost reports again by itself; sending it a second start
  would hand it a second OAuth secret, which its pod would never use.)

Time is the node's own clock on both sides (the heartbeat's ``sent_at`` against the
``last_report_at`` of its state reports), so a clock apart from the control plane's does not
matter, and a heartbeat that overtook a state report is not taken for a disagreement. What is
being waited out lives on the node's item (``strays``, ``missing``: instance id -> since), so
any consumer of any heartbeat picks up where the last one left off.

Every repair is logged with its reason. Deciding from a heartbeat alone never stops anything at
once: the grace period is what keeps a launch in flight, or a record just restored, from being
taken for an orphan.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from control_plane.clock import now_iso
from control_plane.instances import Instances
from control_plane.messaging import Messenger
from control_plane.nodes import Nodes
from control_plane.records import Instance, Node
from control_plane.scheduler import Scheduler
from control_plane.table import ConditionFailed
from protocol.ids import is_id
from protocol.messages import DiscardInstance, InstanceActivity, NodeHeartbeat, StopInstance
from protocol.states import InstanceState

log = logging.getLogger("dit4c.control_plane.reconcile")
S = InstanceState

RUNS_ON_NODE = frozenset({S.SCHEDULED, S.STARTING, S.RUNNING})
"""States in which the node is expected to run the instance's pod."""
KEEPS_CONTAINER = frozenset({S.STOPPING, S.STOPPED})
"""States in which the pod must not run but its containers stay (a stop, not a discard)."""
GONE = frozenset({S.DISCARDED, S.FAILED})
"""States of an instance that will never run again: nothing of it should be reachable."""
ROUTABLE = frozenset({S.SCHEDULED, S.STARTING, S.RUNNING, S.STOPPING})
"""States in which traffic to the instance's host is legitimate."""


@dataclass
class Repairs:
    """What one heartbeat's reconciliation did (for logs and tests)."""

    stopped: list[str] = field(default_factory=list)
    discarded: list[str] = field(default_factory=list)
    started: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)


class Reconciler:
    """See the module docstring."""

    def __init__(self, instances: Instances, nodes: Nodes, messenger: Messenger,
                 scheduler: Scheduler, *, grace_seconds: int,
                 hostname: Callable[[str], str]) -> None:
        """``hostname``: the host an instance id is served at (for instances whose record is
        gone): :meth:`control_plane.config.Config.instance_hostname`."""
        self.scheduler = scheduler
        self.instances = instances
        self.nodes = nodes
        self.messenger = messenger
        self.grace = timedelta(seconds=grace_seconds)
        self.hostname = hostname

    # -- from a node's heartbeat ---------------------------------------------------------

    def heartbeat(self, node: Node, heartbeat: NodeHeartbeat) -> Repairs:
        """Compare ``heartbeat`` (just applied to ``node``) with the records; repair what has
        disagreed for longer than the grace period."""
        at = heartbeat.sent_at
        reported = set(heartbeat.running)
        records = {i.instance_id: i for i in self.instances.on_node(node.node_id)}
        repairs = Repairs()
        strays: dict[str, str] = {}
        for instance_id in sorted(reported):
            record = records.get(instance_id) or (
                self.instances.get(instance_id) if is_id(instance_id) else None)
            why = _stray(record, node.node_id)
            if why is None:
                continue
            since = (node.strays or {}).get(instance_id, at)
            if _elapsed(since, at) < self.grace:
                strays[instance_id] = since
                repairs.waiting.append(instance_id)
                continue
            self._send_away(node, instance_id, record, why, repairs)
            strays[instance_id] = at  # told: wait again before telling it once more
        missing: dict[str, str] = {}
        for record in records.values():
            if record.state == S.SCHEDULED and heartbeat.holds is not None \
                    and record.instance_id not in heartbeat.holds:
                self._unstarted(node, record, repairs)
            if record.state != S.RUNNING or record.instance_id in reported:
                continue
            if (record.last_report_at or "") >= at:
                continue  # this heartbeat may predate the node's running report
            since = (node.missing or {}).get(record.instance_id, at)
            if _elapsed(since, at) < self.grace:
                missing[record.instance_id] = since
                repairs.waiting.append(record.instance_id)
                continue
            reason = (f"node {node.name or node.node_id} no longer reports it running "
                      f"(since {since})")
            if self.fail(record, reason):
                repairs.failed.append(record.instance_id)
        self.nodes.watch(node, strays=strays, missing=missing)
        return repairs

    def _unstarted(self, node: Node, record: Instance, repairs: Repairs) -> None:
        # The control plane's clock on both sides: when it placed (or last sent) the start.
        if _elapsed(record.updated_at, now_iso()) < self.grace:
            return
        try:
            sent = self.instances.update(record, replace(record, updated_at=now_iso()))
        except ConditionFailed:
            return  # the node's report came meanwhile
        self.messenger.send(node.queue_url, self.scheduler.start_message(sent))
        repairs.started.append(record.instance_id)
        log.warning("reconcile: node %s has not started instance %s, scheduled there since "
                    "%s: start sent again", node.node_id, record.instance_id, record.updated_at)

    def _send_away(self, node: Node, instance_id: str, record: Instance | None, why: str,
                   repairs: Repairs) -> None:
        if record is not None and record.placed_on == node.node_id \
                and record.state in KEEPS_CONTAINER:
            self.messenger.send(node.queue_url, StopInstance(instance_id=instance_id))
            repairs.stopped.append(instance_id)
            action = "stop sent"
        else:
            self.messenger.send(node.queue_url, DiscardInstance(instance_id=instance_id))
            repairs.discarded.append(instance_id)
            action = "discard sent"
        if record is None or record.state in GONE:
            hostname = record.hostname if record else self.hostname(instance_id)
            self.scheduler.retire(instance_id, hostname, "gone")
        log.warning("reconcile: node %s runs instance %s, which %s: %s", node.node_id,
                    instance_id, why, action)

    # -- from a router's activity report --------------------------------------------------

    def activity(self, report: InstanceActivity) -> list[str]:
        """Revoke the routes of instances a router carried traffic for that should not have
        any; returns their ids."""
        revoked = []
        for instance_id in sorted(report.last_activity):
            record = self.instances.get(instance_id) if is_id(instance_id) else None
            if record is not None and record.state in ROUTABLE:
                continue
            hostname = record.hostname if record else self.hostname(instance_id)
            if record is None or record.state in GONE:
                self.scheduler.retire(instance_id, hostname, "gone")
            else:
                self.messenger.revoke(instance_id, hostname, record.state.value)
            log.warning("reconcile: router %s carried traffic for instance %s, which is %s: "
                        "route revoked", report.router_id, instance_id,
                        record.state.value if record else "unknown")
            revoked.append(instance_id)
        return revoked

    # -- the repairs, shared with the reaper ---------------------------------------------

    def fail(self, record: Instance, reason: str) -> bool:
        """Move ``record`` to failed (False when someone moved it first: their move wins);
        then nothing of it may be reached, and its node must drop what it holds."""
        try:
            self.instances.transition(record, replace(record, state=S.FAILED, reason=reason))
        except ConditionFailed:
            return False
        self.scheduler.retire(record.instance_id, record.hostname, "failed")
        if record.node_queue_url:
            self.messenger.send(record.node_queue_url,
                                DiscardInstance(instance_id=record.instance_id))
        log.info("failed %s: %s", record.instance_id, reason)
        return True


def _stray(record: Instance | None, node_id: str) -> str | None:
    """Why the node should not run ``record``'s pod, or None when it should."""
    if record is None:
        return "the control plane does not know"
    if record.placed_on != node_id:
        return f"is placed on {record.placed_on or 'no node'}"
    if record.state in RUNS_ON_NODE:
        return None
    return f"is {record.state.value}"


def _elapsed(since: str, at: str) -> timedelta:
    try:
        return _when(at) - _when(since)
    except ValueError:
        return timedelta(0)


def _when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))
