"""Revoked instance hosts, kept for the routers that start later.

A revocation reaches every running router at once (SNS to each router's queue,
:class:`control_plane.messaging.Messenger`), but a router keeps what it was told in memory
only: after a restart, or on a new router, a revoked tunnel token would pass again. So each
revocation is also written here, before it is published, and a router reads the whole list at
start (``GET /api/revocations``). An entry lives as long as a token issued before it could
(:data:`protocol.tokens.REVOCATION_KEEP_SECONDS`; routers refuse longer-lived tokens), so the
table stays small: the revocations of the last hour or so. That is also why the list may be
read with a Scan on a request path: it is one small page, a Lambda invocation costs more.

The list that leaves the control plane names hosts by :func:`protocol.tokens.host_digest`
(anyone may read it; it says nothing about which instances there are).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass

from control_plane.table import ConditionFailed, Table
from protocol.tokens import REVOCATION_KEEP_SECONDS, host_digest


@dataclass(frozen=True)
class Revoked:
    host_sha256: str
    revoked_at: float
    """Tokens for the host issued at or before this moment are refused."""
    expires_at: float
    """After this no token issued before ``revoked_at`` can be valid: the entry may go."""


class Revocations:
    """The ``revocations`` table: hostname -> ``revoked_at``, ``expires_at`` (TTL)."""

    def __init__(self, table: Table, clock: Callable[[], float] = time.time) -> None:
        self.table = table
        self.clock = clock

    def record(self, hostname: str, at: float) -> None:
        """Refuse tokens for ``hostname`` issued up to ``at``. An earlier revocation never
        replaces a later one (redelivery, two writers)."""
        with contextlib.suppress(ConditionFailed):  # a later one of the host is there already
            self.table.put({"hostname": hostname.lower(), "revoked_at": at,
                            "expires_at": int(at + REVOCATION_KEEP_SECONDS) + 1},
                           condition="attribute_not_exists(hostname) OR revoked_at < :at",
                           vals={":at": at})

    def active(self) -> list[Revoked]:
        """Every revocation that can still matter (DynamoDB's TTL deletes late)."""
        now = self.clock()
        return [Revoked(host_digest(str(item["hostname"])), float(item["revoked_at"]),
                        float(item["expires_at"]))
                for item in self.table.scan(consistent=True)
                if float(item["expires_at"]) > now]
