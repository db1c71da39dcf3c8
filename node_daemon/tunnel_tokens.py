"""Renewing the tunnel tokens of the instances this node runs.

A tunnel token lives at most an hour (``protocol.tokens.TUNNEL_TOKEN_MAX_LIFETIME``) and a router
ends a tunnel whose token expired, so that a token a node keeps after its instance moved (or
leaked) dies soon. Every ``token_check_seconds`` the node renews, through the portal (its own
JWT; the portal renews only instances placed on this node), each running instance's token past
half its life, and hands it to the pod's listener, which sends it over its tunnels.

Order, so that a crash anywhere converges: the listener gets the token first, the record after
(the record is what the next check reads: one still holding the old token renews again).
A failure is logged and retried at the next check; an hour is many checks.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace

import docker.errors

from node_daemon.agent import Agent
from node_daemon.errors import NodeDaemonError
from node_daemon.pods import PodRunner
from node_daemon.records import Desired, RecordStore
from protocol.errors import TokenError
from protocol.states import InstanceState as S
from protocol.tokens import unverified_claims

log = logging.getLogger("dit4c.node.tokens")

RENEW_AT = 0.5
"""Renew once this share of a token's life is gone."""

Renew = Callable[[str], Awaitable[str]]
"""instance id -> a renewed token (the portal's answer)."""


def due(token: str, now: float) -> bool:
    """Whether ``token`` is past :data:`RENEW_AT` of its life (its own times, unverified: it is
    ours, and only the timing is read)."""
    try:
        claims = unverified_claims(token)
        issued, expires = float(claims["iat"]), float(claims["exp"])
    except (TokenError, KeyError, TypeError, ValueError):
        return True
    return now >= issued + RENEW_AT * (expires - issued)


class TunnelTokens:
    def __init__(self, *, agent: Agent, records: RecordStore, pods: PodRunner,
                 renew: Renew) -> None:
        self.agent = agent
        self.records = records
        self.pods = pods
        self.renew = renew

    async def renew_due(self) -> int:
        """Renew every running instance's token that is due; how many were renewed."""
        renewed = 0
        for record in await asyncio.to_thread(self.records.all):
            start = record.start
            if (record.desired is not Desired.RUNNING or start is None
                    or record.state not in (S.STARTING, S.RUNNING)
                    or not due(start.tunnel_token, time.time())):
                continue
            try:
                token = await self.renew(record.instance_id)
            except NodeDaemonError as exc:
                log.warning("tunnel token of %s not renewed: %s", record.instance_id, exc)
                continue
            async with self.agent.lock(record.instance_id):
                fresh = await asyncio.to_thread(self.records.get, record.instance_id)
                if fresh is None or fresh.start is None or fresh.desired is not Desired.RUNNING:
                    continue
                try:
                    await asyncio.to_thread(self.pods.hand_tunnel_token, record.instance_id,
                                            token)
                except (NodeDaemonError, docker.errors.DockerException) as exc:
                    log.warning("tunnel token of %s not handed over: %s", record.instance_id,
                                exc)
                    continue
                fresh.start = replace(fresh.start, tunnel_token=token)
                await asyncio.to_thread(self.records.put, fresh)
            renewed += 1
            log.info("tunnel token of %s renewed", record.instance_id)
        return renewed
