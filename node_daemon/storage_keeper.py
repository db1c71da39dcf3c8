"""Keeping the running pods' storage helpers supplied and heard (every ``storage_seconds``).

For each running instance with storage:

- its credentials are renewed through the portal (``PortalClient.storage``, which answers only
  for an instance placed on this node) at half their life, handed to the helper and kept in
  the instance's record; at once when the helper restarted. A sandbox's helper takes them by
  a bind (``PodRunner.bind_storage``): restarted, it comes up with no settings at all and
  waits for that bind, the instance's whole storage from the renewal; running, the same
  storage's bind is a renewal. A helper of an earlier release (settings in its environment)
  gets them by :func:`node_daemon.storage.renew`;
- the helper's health (its status file) goes to the portal when it changes, in the same call:
  the user sees it on the instance, and the tool keeps running;
- a helper that stopped on a running instance is started again, and why it stopped is
  reported the same way.

While an instance is still starting, only a renewal that is due is done (the launch binds the
helper; a long pull may outlive half the credentials' life): nothing else competes with the
launch for the machine.

A failed renewal is logged and tried again next time; the helper keeps its credentials until
they expire, and then reports the failures the tool sees.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import datetime

import docker
import docker.errors

from node_daemon import storage
from node_daemon.agent import Agent
from node_daemon.errors import NodeDaemonError
from node_daemon.pods import PodRunner
from protocol.messages import StorageAccess
from protocol.states import InstanceState

log = logging.getLogger("dit4c.node.storage")

Renew = Callable[..., Awaitable[StorageAccess]]
"""``renew(instance_id, ok=, message=, usage_bytes=)``: the portal's answer."""


def _expiry(access: StorageAccess) -> float:
    text = access.credentials.get("expiration", "")
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0  # unknown: renew now


class StorageKeeper:
    def __init__(self, *, agent: Agent, pods: PodRunner, client: docker.DockerClient,
                 renew: Renew) -> None:
        self.agent = agent
        self.pods = pods
        self.client = client
        self.renew = renew
        self._issued: dict[str, float] = {}
        """When the record's current credentials were obtained (first seen, after a restart
        of the daemon)."""
        self._started: dict[str, str] = {}
        self._reported: dict[str, tuple[bool, str | None]] = {}

    async def tend(self) -> None:
        records = await self.agent.with_storage()
        live = {r.instance_id for r in records}
        for known in (self._issued, self._started, self._reported):
            for gone in set(known) - live:
                del known[gone]
        for record in records:
            assert record.start is not None and record.start.storage is not None
            try:
                await self._tend_one(record.instance_id, record.start.storage,
                                     record.state == InstanceState.RUNNING)
            except (NodeDaemonError, docker.errors.DockerException, RuntimeError) as exc:
                log.warning("storage of %s: %s (tried again in a while)", record.instance_id,
                            exc)

    async def _tend_one(self, instance_id: str, access: StorageAccess, running: bool) -> None:
        if running:
            stopped = await asyncio.to_thread(self.pods.restart_storage, instance_id)
            if stopped is not None:
                log.warning("storage helper of %s stopped (%s): started again", instance_id,
                            stopped)
                await self.renew(instance_id, ok=False,
                                 message=f"restarted: {stopped}"[:500], usage_bytes=None)
                self._reported[instance_id] = (False, None)
        helper = await asyncio.to_thread(self.pods.storage_helper, instance_id)
        if helper is None:
            return  # not running: looked at next time
        now = time.time()
        issued = self._issued.setdefault(instance_id, now)
        expiry = _expiry(access)
        due = now >= issued + (expiry - issued) / 2
        if not running and not due:
            return  # launching: the launch binds it; nothing to add beside its work
        restarted = self._started.get(instance_id) != helper.started_at
        if restarted and helper.binds and running:
            # A restarted helper has no settings: bound at once from the record (renewed
            # within its credentials' first half life), whatever the portal answers next.
            await asyncio.to_thread(self.pods.bind_storage, helper, access)
        status = await asyncio.to_thread(storage.status, self.client, helper.id) or {}
        health = (bool(status.get("ok", True)), status.get("message"))
        if due or restarted or health != self._reported.get(instance_id):
            usage = status.get("usage_bytes")
            access = await self.renew(instance_id, ok=health[0], message=health[1],
                                      usage_bytes=usage if isinstance(usage, int) else None)
            self._reported[instance_id] = health
            self._issued[instance_id] = time.time()
            if helper.binds:
                await asyncio.to_thread(self.pods.bind_storage, helper, access)
            else:
                await asyncio.to_thread(storage.renew, self.client, helper.id, access)
            await self.agent.renewed_storage(instance_id, access)
            log.info("storage of %s renewed until %s%s", instance_id,
                     access.credentials.get("expiration"),
                     "" if health[0] else f" (helper reports: {health[1]})")
        if running:
            self._started[instance_id] = helper.started_at
