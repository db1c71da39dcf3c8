"""The events consumer: ``instance_state`` and ``node_heartbeat`` from nodes, idempotently.

SQS delivers at least once and in any order, so:

- a state report is applied only if the state machine allows the move from where the record is
  now (a late ``starting`` after ``running`` is ignored; a repeat changes nothing), and only
  when it comes from the node the instance is placed on; a node reporting a live pod for an
  instance placed elsewhere (or gone) is told to discard it;
- progress is applied only when newer (by ``sent_at``) than the last applied report;
- a heartbeat is applied only when newer than the last applied heartbeat.

A lost conditional write (someone moved the record meanwhile) is retried on a fresh read.
Malformed messages are logged and dropped: redelivering them cannot make them valid.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from control_plane.catalog import Catalog
from control_plane.instances import Instances
from control_plane.messaging import Messenger
from control_plane.nodes import Nodes
from control_plane.records import Instance
from control_plane.table import ConditionFailed
from protocol.errors import MessageError
from protocol.ids import is_id
from protocol.messages import (
    DiscardInstance,
    InstanceActivity,
    InstanceStateEvent,
    Message,
    NodeHeartbeat,
    decode,
)
from protocol.states import InstanceState

log = logging.getLogger("dit4c.control_plane.events")
S = InstanceState
RETRIES = 5


class Events:
    def __init__(self, instances: Instances, nodes: Nodes, catalog: Catalog,
                 messenger: Messenger) -> None:
        self.instances = instances
        self.nodes = nodes
        self.catalog = catalog
        self.messenger = messenger

    def handle_text(self, body: str) -> str:
        """Decode and apply one queue message; returns what happened (for logs and tests)."""
        try:
            message = decode(body)
        except MessageError as exc:
            log.warning("dropped malformed event: %s", exc)
            return "malformed"
        return self.handle(message)

    def handle(self, message: Message) -> str:
        if isinstance(message, InstanceStateEvent):
            return self.instance_state(message)
        if isinstance(message, NodeHeartbeat):
            applied = self.nodes.heartbeat(
                message.node_id, sent_at=message.sent_at, version=message.version,
                cpu_total=message.cpu_total, memory_mb_total=message.memory_mb_total,
                cpu_used=message.cpu_used, memory_mb_used=message.memory_mb_used,
                load=message.load, running=message.running)
            return "heartbeat" if applied else "stale heartbeat"
        if isinstance(message, InstanceActivity):
            return "activity"
        log.warning("dropped %s: not an event", message.TYPE)
        return "not an event"

    def instance_state(self, event: InstanceStateEvent) -> str:
        try:
            new = S(event.state)
        except ValueError:
            log.warning("dropped instance_state with unknown state %r", event.state)
            return "unknown state"
        for _ in range(RETRIES):
            item = self.instances.get(event.instance_id) if is_id(event.instance_id) else None
            if item is None:
                return self._foreign(event, new)
            if item.node_id != event.node_id:
                return self._foreign(event, new)
            try:
                return self._apply(item, new, event)
            except ConditionFailed:
                continue
        log.warning("gave up on %s after %d lost races", event.id, RETRIES)
        raise RuntimeError(f"event {event.id} lost {RETRIES} races; let SQS redeliver it")

    def _foreign(self, event: InstanceStateEvent, new: InstanceState) -> str:
        """A node runs an instance placed elsewhere (or deleted): tell it to discard it."""
        if new not in (S.STARTING, S.RUNNING):
            return "other node"
        node = self.nodes.find(event.node_id)
        if node is None:
            return "other node"
        self.messenger.send(node.queue_url, DiscardInstance(instance_id=event.instance_id))
        return "discarded elsewhere"

    def _apply(self, item: Instance, new: InstanceState, event: InstanceStateEvent) -> str:
        current = item.state
        last = item.last_report_at or ""
        progress = {**item.progress, **event.progress}
        if new == current:
            if event.progress and event.sent_at > last:
                self.instances.update(item, replace(item, progress=progress,
                                                    last_report_at=event.sent_at))
                return "progress"
            return "duplicate"
        if not current.can_become(new):
            return "ignored"
        moved = replace(item, state=new, progress=progress,
                        last_report_at=max(event.sent_at, last))
        if new == S.FAILED:
            moved = replace(moved, reason=event.reason or "the node reported a failure")
        elif new == S.STOPPED and current == S.SAVING:
            moved = replace(moved, reason=event.reason or "saving failed; the instance is stopped")
        extra = []
        if new == S.SAVED:
            moved = replace(moved, saved_image_id=item.instance_id,
                            progress={**item.progress, "save": 100})
            extra.append(self.catalog.saved_put(item, event.image or item.saved_image
                                                or item.image))
        self.instances.transition(item, moved, extra=extra)
        log.info("instance %s: %s -> %s", item.instance_id, current.value, new.value)
        if new == S.FAILED:
            self.messenger.revoke(item.instance_id, item.hostname, "failed")
        return new.value
