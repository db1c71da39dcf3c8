"""The events consumer: ``instance_state`` and ``node_heartbeat`` from nodes, idempotently.

Every node shares the events queue, so nothing a message says is believed before its sender
is known (:meth:`Events.handle_record`): the body must carry the signature of the node it
names (SQS message attribute ``protocol.messages.SIGNATURE_ATTRIBUTE``, checked against the
key the node enrolled, see :meth:`control_plane.nodes.Nodes.event_sender`), that node must not
be decommissioned, and its ``sent_at`` must not be in the future (beyond
``MAX_CLOCK_SKEW_SECONDS``: a heartbeat dated ahead would make the node's true ones look
stale). Refused messages are logged and dropped. The router's ``instance_activity`` is not
signed and applies nothing.

Why a signature rather than SQS's ``SenderId``: on AWS ``SenderId`` is the role id and session
name of the sender's STS credentials (``AROA...:dit4c-node-<id>``), but moto gives every
message the same constant (``AIDAIT2UOQQY3AUEKVGXU``), so the local stack could not check it;
the node's enrolled key works the same on both, and the node already signs with it.

SQS delivers at least once and in any order, so:

- a state report is applied only if the state machine allows the move from where the record is
  now (a late ``starting`` after ``running`` is ignored; a repeat changes nothing), and only
  when it comes from the node the instance is placed on; a node reporting a live pod for an
  instance placed elsewhere (or gone) is told to discard it;
- progress is applied only when newer (by ``sent_at``) than the last applied report;
- a heartbeat is applied only when newer than the last applied heartbeat, and then compared
  with the records (:mod:`control_plane.reconcile`); so is a router's activity report.

A lost conditional write (someone moved the record meanwhile) is retried on a fresh read.
Malformed messages are logged and dropped: redelivering them cannot make them valid.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from control_plane.catalog import Catalog
from control_plane.errors import Forbidden, Unauthorized
from control_plane.instances import Instances
from control_plane.messaging import Messenger
from control_plane.nodes import Nodes
from control_plane.reconcile import Reconciler
from control_plane.records import Instance, Node
from control_plane.registry import RegistryTokens, user_repository
from control_plane.scheduler import Scheduler
from control_plane.table import ConditionFailed
from protocol.errors import MessageError, RegistryError
from protocol.ids import is_id
from protocol.messages import (
    MAX_CLOCK_SKEW_SECONDS,
    SIGNATURE_ATTRIBUTE,
    DiscardInstance,
    InstanceActivity,
    InstanceStateEvent,
    Message,
    NodeHeartbeat,
    decode,
    sent_time,
)
from protocol.registry import Reference, parse_reference
from protocol.states import InstanceState

log = logging.getLogger("dit4c.control_plane.events")
S = InstanceState
RETRIES = 5


class Events:
    def __init__(self, instances: Instances, nodes: Nodes, catalog: Catalog,
                 messenger: Messenger, *, scheduler: Scheduler, reconciler: Reconciler,
                 registry: RegistryTokens,
                 clock: Callable[[], float] = time.time) -> None:
        self.instances = instances
        self.nodes = nodes
        self.catalog = catalog
        self.messenger = messenger
        self.scheduler = scheduler
        self.reconciler = reconciler
        self.registry = registry
        self.clock = clock

    def handle_record(self, record: Mapping[str, Any]) -> str:
        """One record of a Lambda SQS event (``body``, ``messageAttributes``): see
        :meth:`handle_signed`."""
        attributes = record.get("messageAttributes") or {}
        signature = (attributes.get(SIGNATURE_ATTRIBUTE) or {}).get("stringValue")
        return self.handle_signed(str(record.get("body", "")),
                                  signature if isinstance(signature, str) else None)

    def handle_signed(self, body: str, signature: str | None) -> str:
        """Authenticate, decode and apply one queue message; returns what happened (for logs
        and tests)."""
        try:
            message = decode(body)
        except MessageError as exc:
            log.warning("dropped malformed event: %s", exc)
            return "malformed"
        if isinstance(message, InstanceActivity):
            # Routers hold no key, so their reports are unsigned. That is safe for what one
            # does: it only revokes routes of instances that are not routable by their own
            # record, and a token issued after a revocation still passes.
            return self.handle(message)
        if not isinstance(message, InstanceStateEvent | NodeHeartbeat):
            log.warning("dropped %s: not an event", message.TYPE)
            return "not an event"
        try:
            sender = self.nodes.event_sender(message.node_id, body, signature)
        except (Unauthorized, Forbidden) as exc:
            log.warning("refused %s %s naming node %s: %s", message.TYPE, message.id,
                        message.node_id, exc.message)
            return "refused"
        return self.handle(message, sender)

    def handle(self, message: Message, sender: Node | None = None) -> str:
        """Apply one event whose sender is authenticated (:meth:`handle_record` does that;
        ``sender`` is the node it read, or None to read it here)."""
        if isinstance(message, InstanceStateEvent | NodeHeartbeat):
            ahead = sent_time(message) - datetime.fromtimestamp(self.clock(), UTC)
            if ahead > timedelta(seconds=MAX_CLOCK_SKEW_SECONDS):
                log.warning("refused %s %s of node %s: sent_at %s is %.0f s in the future",
                            message.TYPE, message.id, message.node_id, message.sent_at,
                            ahead.total_seconds())
                return "from the future"
        if isinstance(message, InstanceStateEvent):
            return self.instance_state(message)
        if isinstance(message, NodeHeartbeat):
            node = sender or self.nodes.find(message.node_id, consistent=True)
            applied = node and self.nodes.heartbeat(node, message)
            if not applied:
                return "stale heartbeat"
            self.reconciler.heartbeat(applied, message)
            return "heartbeat"
        if isinstance(message, InstanceActivity):
            self.reconciler.activity(message)
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

    def _pushed(self, item: Instance, image: str) -> Reference | None:
        """``image`` if it is the instance's own repository on the image server, by digest."""
        try:
            reference = parse_reference(image)
        except RegistryError:
            return None
        if reference.registry != self.registry.config.registry or not reference.digest or \
                reference.repository != user_repository(item.owner, item.instance_id):
            return None
        return reference

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
            image = event.image or item.saved_image or item.image
            pushed = self._pushed(item, image)
            if pushed is None and self.registry.enabled:
                # Not where the save was sent: never list someone else's repository as theirs.
                log.warning("instance %s: saved as %r, not in its repository", item.instance_id,
                            image)
                moved = replace(moved, state=S.STOPPED,
                                reason="the node reported the image saved elsewhere; save again")
            else:
                moved = replace(moved, saved_image_id=item.instance_id,
                                saved_image=image, progress={**item.progress, "save": 100})
                extra.append(self.catalog.saved_put(item, image, pushed, event.size))
        self.instances.transition(item, moved, extra=extra)
        log.info("instance %s: %s -> %s", item.instance_id, current.value, new.value)
        if new == S.FAILED:
            self.scheduler.retire(item.instance_id, item.hostname, "failed")
        return new.value
