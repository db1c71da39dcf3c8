"""Instance records (InstancesTable) and their state machine.

Every change of state is one conditional write on ``(state, version)``
(:meth:`Instances.transition`): two writers can never both win, and a replayed event finds the
state already moved and changes nothing. Legal moves come from :mod:`protocol.states` only.

While an instance holds room on a node (``reserved``), leaving the active states releases that
room in the same DynamoDB transaction as the state change, so capacity is returned exactly once.

The per-user limit is exact under concurrency: the owner's user item holds ``live`` (instances in
:data:`COUNTED` states), raised in the same transaction that creates an instance (conditional on
staying within the limit) and lowered in the same transaction as the one move that leaves those
states for good.

Instances in a transitional state carry ``transition`` (= the state) and ``transition_deadline``
(ISO time): the sparse ``by-transition`` index lets the reaper find stuck ones without a Scan.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from control_plane.clock import now_iso
from control_plane.errors import Conflict
from control_plane.records import UNPLACED, Instance, Node
from control_plane.table import ConditionFailed, Table, transact
from protocol.states import InstanceState

S = InstanceState
TRANSITIONAL = (S.PENDING, S.SCHEDULED, S.STARTING, S.STOPPING, S.SAVING)
COUNTED = frozenset({S.PENDING, S.SCHEDULED, S.STARTING, S.RUNNING, S.STOPPING})
"""States that count against the per-user limit (once left, never re-entered)."""


class Instances:
    """Instance records; ``nodes`` is the NodesTable (capacity release on leaving active states)."""

    def __init__(self, table: Table, nodes: Table, users: Table, *,
                 transition_timeout: int) -> None:
        self.table = table
        self.nodes = nodes
        self.users = users
        self.transition_timeout = transition_timeout

    def get(self, instance_id: str) -> Instance | None:
        item = self.table.get({"instance_id": instance_id})
        return Instance.from_item(item) if item else None

    def many(self, instance_ids: list[str]) -> list[Instance]:
        return [Instance.from_item(i)
                for i in self.table.batch_get([{"instance_id": i} for i in instance_ids])]

    def create(self, instance: Instance, *, limit: int) -> Instance:
        """Put a new pending instance; ConditionFailed when its owner is at ``limit``."""
        now = now_iso()
        full = replace(instance, state=S.PENDING, version=1, progress={}, node_id=UNPLACED,
                       created_at=now, updated_at=now,
                       transition=S.PENDING,
                       transition_deadline=now_iso(self.transition_timeout))
        transact(self.table.client, [
            self.table.put_op(full.to_item(), condition="attribute_not_exists(instance_id)"),
            self.users.update_op(
                {"username": instance.owner}, "SET live = if_not_exists(live, :zero) + :one",
                condition="attribute_exists(username) AND "
                          "(attribute_not_exists(live) OR live < :limit)",
                vals={":zero": 0, ":one": 1, ":limit": limit}),
        ])
        return full

    def of_owner(self, owner: str) -> list[Instance]:
        return [Instance.from_item(i) for i in self.table.query(
            "#o = :o", index="by-owner", names={"#o": "owner"}, vals={":o": owner},
            forward=False)]

    def on_node(self, node_id: str) -> list[Instance]:
        return [Instance.from_item(i) for i in self.table.query(
            "node_id = :n", index="by-node", vals={":n": node_id})]

    def in_transition(self, state: InstanceState, *, before: str | None = None) -> list[str]:
        """Ids of instances in ``state`` (a transitional one), optionally past their deadline."""
        condition = "#t = :s" + (" AND transition_deadline < :d" if before else "")
        vals: dict[str, Any] = {":s": state.value}
        if before:
            vals[":d"] = before
        return [i["instance_id"] for i in self.table.query(
            condition, index="by-transition", names={"#t": "transition"}, vals=vals)]

    def any_in_transition(self) -> bool:
        """Is any instance in a transitional state? (One item at most from each state.)"""
        return any(next(self.table.query("#t = :s", index="by-transition",
                                         names={"#t": "transition"},
                                         vals={":s": state.value}, limit=1), None) is not None
                   for state in TRANSITIONAL)

    def transition(self, old: Instance, new: Instance | InstanceState, *,
                   extra: list[dict[str, Any]] | None = None,
                   reserve_on: Node | None = None) -> Instance:
        """Move ``old`` to ``new`` (a state, or the record as it should become) if it is still
        at its (state, version); else ConditionFailed. Only the attributes that differ are
        written; ``version``, ``updated_at``, ``transition*`` and ``reserved`` are kept here.

        ``reserve_on``: a node whose room this move reserves (placement), conditional on the
        room being there. Leaving the active states releases a reservation held.
        ``extra``: further transaction entries that must succeed with the move.
        """
        if isinstance(new, InstanceState):
            new = replace(old, state=new)
        if not old.state.can_become(new.state):
            raise Conflict(f"instance {old.instance_id} is {old.state.value}; "
                           f"it cannot become {new.state.value}")
        transitional = new.state in TRANSITIONAL
        new = replace(new, version=old.version + 1, updated_at=now_iso(),
                      transition=new.state if transitional else None,
                      transition_deadline=now_iso(self.transition_timeout) if transitional
                      else None,
                      reserved=reserve_on is not None or (old.reserved and new.state.active))
        ops = list(extra or [])
        if old.state in COUNTED and new.state not in COUNTED:
            ops.append(self.users.update_op(
                {"username": old.owner}, "SET live = if_not_exists(live, :one) - :one",
                vals={":one": 1}))
        if old.reserved and not new.reserved:
            ops.append(self._capacity_op(old.node_id, old, sign=-1))
        if reserve_on is not None:
            ops.append(self._reserve_op(reserve_on, old))
        update = self._update(old, new, bump=True)
        if ops:
            transact(self.table.client, [self.table.update_op(**update), *ops])
            return new
        return Instance.from_item(self.table.update(**update))

    def update(self, old: Instance, new: Instance) -> Instance:
        """Change fields other than the state (progress, notes) on the same (state, version)
        guard; ConditionFailed if the record moved meanwhile."""
        return Instance.from_item(self.table.update(**self._update(old, new, bump=False)))

    def delete(self, instance: Instance) -> None:
        self.table.delete({"instance_id": instance.instance_id},
                          condition="#state = :s AND #ver = :v",
                          names={"#state": "state", "#ver": "version"},
                          vals={":s": instance.state.value, ":v": instance.version})

    def _update(self, old: Instance, new: Instance, *, bump: bool) -> dict[str, Any]:
        """UpdateItem arguments that turn ``old`` into ``new``, guarded by (state, version)."""
        before, after = old.to_item(), new.to_item()
        sets = {k: v for k, v in after.items() if before.get(k) != v and k != "version"}
        removes = sorted(set(before) - set(after))
        names = {f"#k{i}": k for i, k in enumerate(sets)}
        vals: dict[str, Any] = {f":v{i}": v for i, v in enumerate(sets.values())}
        assignments = [f"#k{i} = :v{i}" for i in range(len(sets))]
        if bump:
            assignments.append("#ver = #ver + :one")
            vals[":one"] = 1
        expression = "SET " + ", ".join(assignments)
        if removes:
            names.update({f"#r{i}": k for i, k in enumerate(removes)})
            expression += " REMOVE " + ", ".join(f"#r{i}" for i in range(len(removes)))
        names.update({"#state": "state", "#ver": "version"})
        vals.update({":old": old.state.value, ":oldver": old.version})
        return {"key": {"instance_id": old.instance_id}, "expression": expression,
                "condition": "#state = :old AND #ver = :oldver", "names": names,
                "vals": vals}

    # --- capacity ---------------------------------------------------------------------

    def _reserve_op(self, node: Node, instance: Instance) -> dict[str, Any]:
        cpu, mem = round(instance.cpu * 1000), instance.memory_mb
        return self.nodes.update_op(
            {"node_id": node.node_id},
            "SET cpu_milli_reserved = cpu_milli_reserved + :c, "
            "memory_mb_reserved = memory_mb_reserved + :m",
            condition="#s = :active AND cpu_milli_total = :ct AND memory_mb_total = :mt "
                      "AND cpu_milli_reserved <= :cmax AND memory_mb_reserved <= :mmax",
            names={"#s": "status"},
            vals={":c": cpu, ":m": mem, ":active": "active", ":ct": node.cpu_milli_total,
                  ":mt": node.memory_mb_total, ":cmax": node.cpu_milli_total - cpu,
                  ":mmax": node.memory_mb_total - mem})

    def _capacity_op(self, node_id: str, instance: Instance, *, sign: int) -> dict[str, Any]:
        cpu, mem = round(instance.cpu * 1000), instance.memory_mb
        return self.nodes.update_op(
            {"node_id": node_id},
            "SET cpu_milli_reserved = cpu_milli_reserved + :c, "
            "memory_mb_reserved = memory_mb_reserved + :m",
            condition="attribute_exists(node_id)",
            vals={":c": sign * cpu, ":m": mem * sign})


__all__ = ["COUNTED", "TRANSITIONAL", "ConditionFailed", "Instances"]
