"""Property test of the state machine and the scheduler over moto.

Random interleavings of launches (also with stale views of the nodes, as two concurrent
launches would have), node reports (duplicated, reordered, from the wrong node, illegal),
heartbeats (reordered), stops, node silence and reaper runs must never produce:

- a state outside ``protocol.states`` or a move the transition table does not allow;
- an instance holding room on a node while not live, or a live instance holding none;
- a user whose count of live instances (the per-user limit) differs from what they have;
- a node whose reserved room differs from the sum of what its instances hold (a double
  placement or a double release), or exceeds its capacity (over-commit).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from control_plane.accounts import User
from control_plane.bodies import Enroll, Launch, NewImage
from control_plane.instances import COUNTED
from control_plane.nodes import milli
from control_plane.records import Image, Instance
from control_plane.replies import Enrolled
from control_plane.services import Services
from control_plane.table import ConditionFailed
from protocol.messages import InstanceStateEvent, NodeHeartbeat
from protocol.states import TRANSITIONS, InstanceState
from protocol.tokens import SigningKey

from .conftest import cp_module_services

S = InstanceState
STATES = [s.value for s in S]
LIVE = {S.SCHEDULED, S.STARTING, S.RUNNING, S.STOPPING}


@pytest.fixture(scope="module")
def cp_props() -> Iterator[Services]:
    with cp_module_services("pt", max_running_per_user=1000) as svc:
        yield svc


def _reachable(old: S, new: S) -> bool:
    seen, frontier = {old}, [old]
    while frontier:
        for nxt in TRANSITIONS[frontier.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                frontier.append(nxt)
    return new in seen


OPS = st.lists(st.one_of(
    st.tuples(st.just("launch"), st.integers(0, 2)),
    st.tuples(st.just("stale_launch"), st.integers(0, 2)),
    st.tuples(st.just("event"), st.integers(0, 9), st.sampled_from(STATES), st.booleans(),
              st.integers(0, 3)),
    st.tuples(st.just("replay"), st.integers(0, 30)),
    st.tuples(st.just("heartbeat"), st.integers(0, 1), st.integers(0, 5)),
    st.tuples(st.just("stop"), st.integers(0, 9)),
    st.tuples(st.just("silence"), st.integers(0, 1)),
    st.tuples(st.just("reap"),),
), min_size=1, max_size=25)


@pytest.mark.timeout(150)
# No shrinking: each step is several moto calls, and a failure prints its full op list anyway.
@settings(max_examples=int(os.environ.get("CP_PROP_EXAMPLES", "25")), deadline=None,
          derandomize=True, phases=[Phase.explicit, Phase.generate],
          suppress_health_check=[HealthCheck.function_scoped_fixture,
                                 HealthCheck.too_slow])
@given(ops=OPS)
def test_no_interleaving_breaks_the_invariants(cp_props: Services, ops: list[Any]) -> None:
    svc = cp_props
    cluster = svc.nodes.create_cluster("p", cluster_id=uuid.uuid4().hex[:12]).cluster_id
    image = svc.catalog.add(NewImage(name="t", image=f"t/{cluster}:1", port=80, cpu=1,
                                     memory_mb=512))
    nodes = []
    for i, (cpu, mem) in enumerate([(2, 1024), (3, 1024)]):
        token = svc.nodes.create_join_token(cluster).token
        nodes.append(svc.nodes.enroll(Enroll(join_token=token, name=f"n{i}", cpu=cpu,
                                             memory_mb=mem,
                                             public_jwk=SigningKey.generate().public_jwk())))
    ids: list[str] = []
    try:
        _run(svc, ops, cluster, image, nodes, ids)
    finally:  # the reaper sees every cluster: leave nothing for the next example
        for instance_id in ids:
            svc.instances.table.delete({"instance_id": instance_id})
        for n in nodes:
            svc.nodes.nodes.delete({"node_id": n.node_id})
        svc.nodes.clusters.delete({"cluster_id": cluster})


def _run(svc: Services, ops: list[Any], cluster: str, image: Image,  # noqa: PLR0912, PLR0917 - one branch per kind of step
         nodes: list[Enrolled], ids: list[str]) -> None:
    sent: list[InstanceStateEvent] = []
    last_seen: dict[str, S] = {}
    user = User(f"p{cluster}", admin=False)
    svc.accounts.users.put({"username": user.username, "admin": False})

    for op in ops:
        kind = op[0]
        if kind == "launch":
            ids.append(svc.lifecycle.launch(user, Launch(image_id=image.image_id,
                                                         cluster_id=cluster)).instance_id)
        elif kind == "stale_launch":
            # Two launches that both read the nodes before either reserved.
            first = svc.lifecycle.launch(user, Launch(image_id=image.image_id,
                                                      cluster_id=cluster))
            ids.append(first.instance_id)
            pending = svc.instances.create(Instance(
                instance_id=uuid.uuid4().hex[:16], owner=user.username, name="s",
                image_id=image.image_id, image=image.image, port=80, cpu=1, memory_mb=512,
                cluster_id=cluster, hostname="h", url="u"), limit=1000)
            stale = [svc.nodes.get(n.node_id) for n in nodes]
            ids.append(svc.scheduler.place(pending, candidates=stale).instance_id)
        elif kind == "event" and ids:
            _, which, state, right_node, age = op
            item = svc.instances.get(ids[which % len(ids)])
            if item is None:
                continue
            node_id = item.node_id if right_node else nodes[0].node_id
            event = InstanceStateEvent(node_id=node_id or "nobody",
                                       instance_id=item.instance_id, state=state,
                                       progress={"pull": age * 25},
                                       sent_at=f"2030-01-01T00:00:0{age}.000Z")
            sent.append(event)
            svc.events.handle(event)
        elif kind == "replay" and sent:
            svc.events.handle(sent[op[1] % len(sent)])
        elif kind == "heartbeat":
            node = nodes[op[1]]
            total = svc.nodes.get(node.node_id)
            svc.events.handle(NodeHeartbeat(
                node_id=node.node_id, version="1", cpu_total=total.cpu_milli_total / 1000,
                memory_mb_total=total.memory_mb_total, cpu_used=0, memory_mb_used=0,
                load=op[2], running=[], sent_at=f"2030-01-01T00:00:0{op[2]}.000Z"))
        elif kind == "stop" and ids:
            try:
                svc.lifecycle.stop(user, ids[op[1] % len(ids)])
            except Exception as exc:
                assert getattr(exc, "status", 500) == 409, exc
        elif kind == "silence":
            svc.nodes.nodes.update({"node_id": nodes[op[1]].node_id},
                                   "SET last_heartbeat = :z", vals={":z": 0})
        elif kind == "reap":
            try:
                svc.reaper.run()
            except ConditionFailed:  # pragma: no cover - the reaper handles its own races
                raise

        # --- invariants after every step ------------------------------------------------
        items = [i for i in (svc.instances.get(x) for x in ids) if i is not None]
        held: dict[str, list[int]] = {n.node_id: [0, 0] for n in nodes}
        for item in items:
            state = item.state
            old = last_seen.get(item.instance_id, S.PENDING)
            assert state == old or _reachable(old, state), (old, state)
            last_seen[item.instance_id] = state
            if item.reserved:
                assert state in LIVE, item
                held[item.node_id][0] += milli(item.cpu)
                held[item.node_id][1] += item.memory_mb
            else:
                assert state not in LIVE, item
        counted = sum(1 for i in items if i.state in COUNTED)
        owner = svc.accounts.users.get({"username": user.username}) or {}
        assert owner.get("live", 0) == counted
        for n in nodes:
            node = svc.nodes.get(n.node_id)
            assert [node.cpu_milli_reserved, node.memory_mb_reserved] == \
                held[n.node_id], (node, held)
            assert 0 <= node.cpu_milli_reserved <= node.cpu_milli_total
            assert 0 <= node.memory_mb_reserved <= node.memory_mb_total
