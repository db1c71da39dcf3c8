"""Instance lifecycle (contract: state names, see ARCHITECTURE.md).

    pending ─> scheduled ─> starting ─> running ─> stopping ─> stopped ─┬─> saving ─> saved
       │            │           │          │                            └─> discarded
       └────────────┴───────────┴──────────┴──> failed (with a reason)

The control plane writes every transition as a conditional update on (state, version), so this
table is the only place that decides what is legal.
"""

from __future__ import annotations

from enum import StrEnum


class InstanceState(StrEnum):
    PENDING = "pending"
    SCHEDULED = "scheduled"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    SAVING = "saving"
    SAVED = "saved"
    DISCARDED = "discarded"
    FAILED = "failed"

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL

    @property
    def active(self) -> bool:
        """True while the instance holds (or is about to hold) resources on a node."""
        return self in _ACTIVE

    def can_become(self, new: InstanceState) -> bool:
        return new in TRANSITIONS[self]


S = InstanceState

TRANSITIONS: dict[InstanceState, frozenset[InstanceState]] = {
    S.PENDING: frozenset({S.SCHEDULED, S.STOPPING, S.FAILED}),
    S.SCHEDULED: frozenset({S.STARTING, S.RUNNING, S.STOPPING, S.FAILED, S.PENDING}),
    S.STARTING: frozenset({S.RUNNING, S.STOPPING, S.STOPPED, S.FAILED}),
    S.RUNNING: frozenset({S.STOPPING, S.STOPPED, S.FAILED}),
    S.STOPPING: frozenset({S.STOPPED, S.FAILED}),
    S.STOPPED: frozenset({S.SAVING, S.DISCARDED}),
    S.SAVING: frozenset({S.SAVED, S.STOPPED, S.FAILED}),
    S.SAVED: frozenset(),
    S.DISCARDED: frozenset(),
    S.FAILED: frozenset({S.DISCARDED}),
}
"""Legal moves. ``scheduled -> pending`` is a re-placement after the chosen node died;
``scheduled -> running`` accepts a node's report that skipped ``starting`` (events arrive in any
order); ``saving -> stopped`` is a failed upload that keeps the stopped container."""

_TERMINAL = frozenset({S.SAVED, S.DISCARDED})
_ACTIVE = frozenset({S.SCHEDULED, S.STARTING, S.RUNNING, S.STOPPING})
