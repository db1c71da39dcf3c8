"""Nothing billed while nothing runs: the events queue's trigger and the reaper's schedule are
on only while there is work for them.

Lambda's SQS event source mapping polls the events queue whether or not anything comes (five
20 s long-polls at a time, billed as SQS requests: ~$0.26 a month), and the reaper's schedule
invokes it every minute (~$0.05 a month). Both are needed only while there is *work*: a node
that is neither decommissioned nor silent (its events must be read, its silence noticed), or
an instance in a transitional state (the reaper sees each one through). So:

- **Off** -- the reaper, at the end of a run that found no work (:meth:`Standby.settle`): the
  mapping first, then its own schedule; then it looks for work once more, and turns its
  schedule back on if some came meanwhile. Whoever made that work woke it after writing it, so
  either the second look sees the work or the wake comes after the switch-off: never lost.
- **On** -- whoever makes work while everything may be off turns the reaper's schedule on
  (:meth:`Standby.wake`): the API when a node enrols, when a silent node asks for credentials
  (it is back), and when an instance is left for the reaper (a launch that found no room, a
  save). The reaper's next run (within a minute) turns the mapping on: each run that finds
  work makes sure both are on (a run can come after its schedule was switched off).

A node's first events after a wake wait in the queue until then; nothing is lost (the queue
keeps them four days). Locally (the local stack, the tests over moto) there is no mapping: the
local stack's SQS pump follows the reaper's rule as the mapping would (``infra/local``).

A failed switch is logged and never fails the request or run that tried it: the next wake or
run tries again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Final

from botocore.exceptions import BotoCoreError, ClientError

from control_plane.aws import Clients

log = logging.getLogger("dit4c.control_plane.standby")

_POLLING: Final = frozenset({"Enabled", "Enabling", "Updating", "Creating"})
"""The mapping's states in which it polls, or is about to (off: Disabled, Disabling)."""
_MOVING: Final = frozenset({"Enabling", "Disabling", "Updating", "Creating"})
"""States in which Lambda refuses a change (ResourceInUseException): the next run retries."""


class Standby:
    """The switch: see the module docstring. ``mapping``: the events queue's event source
    mapping (UUID), None where there is none."""

    def __init__(self, clients: Clients, *, rule: str, mapping: str | None) -> None:
        self._clients = clients
        self.rule = rule
        self.mapping = mapping

    def wake(self) -> None:
        """Turn the reaper's schedule on (it turns the rest on); harmless when it is on."""
        try:
            self._clients.get("events").enable_rule(Name=self.rule)
        except (BotoCoreError, ClientError):
            log.exception("could not turn the reaper's schedule %s on; the next wake retries",
                          self.rule)

    def settle(self, busy: bool, find_work: Callable[[], bool]) -> str:
        """The reaper's end of run: with work (``busy``), make sure its schedule and the mapping
        are on; without, switch them off, then ``find_work()`` once more. Returns ``on``,
        ``off`` or ``waiting`` (the mapping is changing state, or a call failed: the next run
        finishes)."""
        try:
            events = self._clients.get("events")
            if busy:
                events.enable_rule(Name=self.rule)
                return "on" if self._mapping_to(on=True) else "waiting"
            if not self._mapping_to(on=False):
                return "waiting"  # its schedule stays on until the mapping can be turned off
            events.disable_rule(Name=self.rule)
            if find_work():
                events.enable_rule(Name=self.rule)
                log.info("work came while switching off; the reaper's schedule stays on")
                return "on"
        except (BotoCoreError, ClientError):
            log.exception("could not switch the events trigger and the reaper's schedule; "
                          "the next run retries")
            return "waiting"
        log.info("nothing to do: the events trigger and the reaper's schedule are off")
        return "off"

    def _mapping_to(self, *, on: bool) -> bool:
        """Turn the mapping on or off; False when it cannot be changed now."""
        if self.mapping is None:
            return True
        client = self._clients.get("lambda")
        state = client.get_event_source_mapping(UUID=self.mapping)["State"]
        if (state in _POLLING) == on:
            return True
        if state in _MOVING:
            return False
        try:
            client.update_event_source_mapping(UUID=self.mapping, Enabled=on)
        except client.exceptions.ResourceInUseException:
            return False
        log.info("events trigger %s turned %s", self.mapping, "on" if on else "off")
        return True
