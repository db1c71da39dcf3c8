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

from typing import Any

from control_plane.clock import now_iso
from control_plane.errors import Conflict
from control_plane.table import ConditionFailed, Item, Table, serialize, transact
from protocol.states import InstanceState

S = InstanceState
TRANSITIONAL = (S.PENDING, S.SCHEDULED, S.STARTING, S.STOPPING, S.SAVING)
COUNTED = frozenset({S.PENDING, S.SCHEDULED, S.STARTING, S.RUNNING, S.STOPPING})
"""States that count against the per-user limit (once left, never re-entered)."""
UNPLACED = "unplaced"
"""``node_id`` of an instance on no node: keeps every instance in the ``by-node`` index, so an
admin can list them all with Queries (no node id is ever this word: ids are hex)."""
INSTANCE_FIELDS = ("image_id", "image", "port", "cpu", "memory_mb", "cluster_id", "name")


class Instances:
    """Instance records; ``nodes`` is the NodesTable (capacity release on leaving active states)."""

    def __init__(self, table: Table, nodes: Table, users: Table, *,
                 transition_timeout: int) -> None:
        self.table = table
        self.nodes = nodes
        self.users = users
        self.transition_timeout = transition_timeout

    def get(self, instance_id: str) -> Item | None:
        return self.table.get({"instance_id": instance_id})

    def create(self, item: Item, *, limit: int) -> Item:
        """Put a new pending instance; ConditionFailed when its owner is at ``limit``."""
        full = {**item, "state": S.PENDING.value, "version": 1, "progress": {},
                "node_id": UNPLACED,
                "created_at": now_iso(), "updated_at": now_iso(),
                "transition": S.PENDING.value,
                "transition_deadline": now_iso(self.transition_timeout)}
        transact(self.table.client, [
            {"Put": {"TableName": self.table.name, "Item": serialize(full),
                     "ConditionExpression": "attribute_not_exists(instance_id)"}},
            self.users.update_op(
                {"username": item["owner"]}, "SET live = if_not_exists(live, :zero) + :one",
                condition="attribute_exists(username) AND "
                          "(attribute_not_exists(live) OR live < :limit)",
                vals={":zero": 0, ":one": 1, ":limit": limit}),
        ])
        return full

    def of_owner(self, owner: str) -> list[Item]:
        return list(self.table.query("#o = :o", index="by-owner", names={"#o": "owner"},
                                     vals={":o": owner}, forward=False))

    def on_node(self, node_id: str) -> list[Item]:
        return list(self.table.query("node_id = :n", index="by-node", vals={":n": node_id}))

    def in_transition(self, state: InstanceState, *, before: str | None = None) -> list[str]:
        """Ids of instances in ``state`` (a transitional one), optionally past their deadline."""
        condition = "#t = :s" + (" AND transition_deadline < :d" if before else "")
        vals: dict[str, Any] = {":s": state.value}
        if before:
            vals[":d"] = before
        return [i["instance_id"] for i in self.table.query(
            condition, index="by-transition", names={"#t": "transition"}, vals=vals)]

    def transition(self, item: Item, new: InstanceState, *, fields: dict[str, Any] | None = None,
                   remove: tuple[str, ...] = (), extra: list[dict[str, Any]] | None = None,
                   reserve_on: Item | None = None) -> Item:
        """Move ``item`` to ``new`` if it is still at its (state, version); else ConditionFailed.

        ``reserve_on``: a node item whose room this move reserves (placement), conditional on
        the room being there. Leaving the active states releases a reservation held.
        ``extra``: further transaction entries that must succeed with the move.
        """
        old = InstanceState(item["state"])
        if not old.can_become(new):
            raise Conflict(f"instance {item['instance_id']} is {old.value}; "
                           f"it cannot become {new.value}")
        now = now_iso()
        sets: dict[str, Any] = {"state": new.value, "updated_at": now, **(fields or {})}
        removes = set(remove)
        if new in TRANSITIONAL:
            sets["transition"] = new.value
            sets["transition_deadline"] = now_iso(self.transition_timeout)
        else:
            removes |= {"transition", "transition_deadline"}
        ops = list(extra or [])
        if old in COUNTED and new not in COUNTED:
            ops.append(self.users.update_op(
                {"username": item["owner"]}, "SET live = if_not_exists(live, :one) - :one",
                vals={":one": 1}))
        releasing = bool(item.get("reserved")) and not new.active
        if releasing:
            removes.add("reserved")
            ops.append(self._capacity_op(item["node_id"], item, sign=-1))
        if reserve_on is not None:
            sets["reserved"] = True
            ops.append(self._reserve_op(reserve_on, item))
        removes -= set(sets)
        names = {f"#k{i}": k for i, k in enumerate(sets)}
        vals = {f":v{i}": v for i, v in enumerate(sets.values())}
        expression = "SET " + ", ".join(f"#k{i} = :v{i}" for i in range(len(sets)))
        expression += ", #ver = #ver + :one"
        if removes:
            rnames = {f"#r{i}": k for i, k in enumerate(sorted(removes))}
            names.update(rnames)
            expression += " REMOVE " + ", ".join(rnames)
        names.update({"#state": "state", "#ver": "version"})
        vals.update({":old": old.value, ":oldver": item["version"], ":one": 1})
        condition = "#state = :old AND #ver = :oldver"
        key = {"instance_id": item["instance_id"]}
        if ops:
            transact(self.table.client, [self.table.update_op(
                key, expression, condition=condition, names=names, vals=vals), *ops])
            merged = {k: v for k, v in item.items() if k not in removes}
            return {**merged, **sets, "version": item["version"] + 1}
        return self.table.update(key, expression, condition=condition, names=names, vals=vals)

    def update_fields(self, item: Item, fields: dict[str, Any]) -> Item:
        """Change non-state fields (progress, notes) on the same (state, version) guard."""
        names = {f"#k{i}": k for i, k in enumerate(fields)}
        vals = {f":v{i}": v for i, v in enumerate(fields.values())}
        names.update({"#state": "state", "#ver": "version"})
        vals.update({":old": item["state"], ":oldver": item["version"]})
        return self.table.update(
            {"instance_id": item["instance_id"]},
            "SET " + ", ".join(f"#k{i} = :v{i}" for i in range(len(fields))),
            condition="#state = :old AND #ver = :oldver", names=names, vals=vals)

    def delete(self, item: Item) -> None:
        self.table.delete({"instance_id": item["instance_id"]},
                          condition="#state = :s AND #ver = :v",
                          names={"#state": "state", "#ver": "version"},
                          vals={":s": item["state"], ":v": item["version"]})

    # --- capacity ---------------------------------------------------------------------

    def _reserve_op(self, node: Item, instance: Item) -> dict[str, Any]:
        cpu, mem = round(instance["cpu"] * 1000), instance["memory_mb"]
        return self.nodes.update_op(
            {"node_id": node["node_id"]},
            "SET cpu_milli_reserved = cpu_milli_reserved + :c, "
            "memory_mb_reserved = memory_mb_reserved + :m",
            condition="#s = :active AND cpu_milli_total = :ct AND memory_mb_total = :mt "
                      "AND cpu_milli_reserved <= :cmax AND memory_mb_reserved <= :mmax",
            names={"#s": "status"},
            vals={":c": cpu, ":m": mem, ":active": "active", ":ct": node["cpu_milli_total"],
                  ":mt": node["memory_mb_total"], ":cmax": node["cpu_milli_total"] - cpu,
                  ":mmax": node["memory_mb_total"] - mem})

    def _capacity_op(self, node_id: str, instance: Item, *, sign: int) -> dict[str, Any]:
        cpu, mem = round(instance["cpu"] * 1000), instance["memory_mb"]
        return self.nodes.update_op(
            {"node_id": node_id},
            "SET cpu_milli_reserved = cpu_milli_reserved + :c, "
            "memory_mb_reserved = memory_mb_reserved + :m",
            condition="attribute_exists(node_id)",
            vals={":c": sign * cpu, ":m": sign * mem})


__all__ = ["INSTANCE_FIELDS", "TRANSITIONAL", "ConditionFailed", "Instances"]
