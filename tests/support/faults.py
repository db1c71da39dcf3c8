"""The fault suite's harness: the local stack killed at random points, and what must hold after.

:class:`FaultRun` runs ``python -m infra.local run --restart-children`` (the real stack: moto
with its journal, the control plane, the edge router and the node daemon as processes, pods in
the real Docker engine) and repeats a *cycle*:

1. a user does one thing through the portal: launch, stop, save, discard or delete an instance,
   or an admin creates a user; what the portal acknowledged (2xx) goes in the :class:`Ledger`;
2. after a random pause (0 to ``max_pause`` s: the node may be pulling, starting, committing or
   removing containers, the control plane writing records or sending commands), SIGKILL one of:
   the stack's process (its children live on, as after ``kill -9`` of ``make run``), the node
   daemon, the edge router, or all three at once;
3. restart what was killed (the stack process anew; a killed child is started again by the
   stack) and check: every acknowledged write is there (:meth:`Ledger.check`), and every
   instance that was running before the kill, and that this cycle did not touch, is reachable
   again by its owner through the router (its sign-in included) — how long that took is
   counted against 30 s.

At the end, after the reconciliation grace period and the transition timeout: no pod runs
(container of the node, running) whose instance is not live in the control plane, and no
instance sits in a transitional state past its deadline. :class:`Counts` holds the figures;
``str()`` is the table the docs show.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import docker

from protocol import pod
from protocol.states import InstanceState
from tests.support.local_stack import (
    Browser,
    StackProcess,
    alive,
    children,
    get_status,
    log_in,
    reach,
)

S = InstanceState
TARGETS = ("stack", "node-daemon", "edge-router", "all")
WEIGHTS = (1, 4, 3, 1)
"""How often each is killed: a restart of the stack's process costs several seconds, one of a
child about one."""
LIVE = frozenset({S.PENDING, S.SCHEDULED, S.STARTING, S.RUNNING, S.STOPPING})
TRANSITIONAL = frozenset({S.PENDING, S.SCHEDULED, S.STARTING, S.STOPPING, S.SAVING})
REACHABLE_WITHIN = 30.0
MAX_INSTANCES = 3
"""Live instances at once (each user's limit is 4; the node's room is larger)."""

# What an acknowledged action guarantees about the instance's state from then on (until a later
# acknowledged action): a stop is never undone, a discard never, a delete leaves nothing.
AFTER_STOP = frozenset({S.STOPPING, S.STOPPED, S.SAVING, S.SAVED, S.DISCARDED, S.FAILED})
AFTER_SAVE = frozenset({S.SAVING, S.SAVED, S.STOPPED, S.DISCARDED, S.FAILED})
AFTER_DISCARD = frozenset({S.DISCARDED})


def fault_env(base: dict[str, str]) -> dict[str, str]:
    """The settings a fault run adds to a test stack's: fast heartbeats, reconciliation, reaper
    and compactions, so that each cycle's repairs happen within seconds."""
    return {
        **base,
        "DIT4C_NODE_HEARTBEAT_SECONDS": "1",
        "DIT4C_NODE_RECONCILE_SECONDS": "2",
        "DIT4C_NODE_REPORT_AGAIN_SECONDS": "4",
        "DIT4C_SCHEDULE_SECONDS": "2",
        "DIT4C_RECONCILE_GRACE_SECONDS": "4",
        # A launch takes seconds on a quiet machine and a minute under the load of several
        # suites: the timeouts leave room for that.
        "DIT4C_TRANSITION_TIMEOUT_SECONDS": "120",
        "DIT4C_NODE_LAUNCH_TIMEOUT_SECONDS": "100",
        "DIT4C_SNAPSHOT_SECONDS": "1",
        "DIT4C_JOURNAL_BYTES": "65536",
        "DIT4C_STOP_GRACE": "2",
    }


@dataclass
class Counts:
    cycles: int = 0
    kills: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TARGETS, 0))
    actions: dict[str, int] = field(default_factory=dict)
    acknowledged: int = 0
    lost: list[str] = field(default_factory=list)
    reach_checks: int = 0
    late: list[str] = field(default_factory=list)
    slowest_reach: float = 0.0
    orphan_pods: list[str] = field(default_factory=list)
    stuck: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def __str__(self) -> str:
        kills = ", ".join(f"{target} {n}" for target, n in self.kills.items())
        actions = ", ".join(f"{name} {n}" for name, n in sorted(self.actions.items()))
        rows = [
            ("cycles (one SIGKILL each)", f"{self.cycles} in {self.seconds:.0f} s"),
            ("killed", kills),
            ("acknowledged actions", f"{self.acknowledged} ({actions})"),
            ("acknowledged writes lost", str(len(self.lost))),
            ("pods without a live instance after the grace period", str(len(self.orphan_pods))),
            ("instances stuck in a transitional state past their timeout", str(len(self.stuck))),
            ("running, untouched instances checked after a restart", str(self.reach_checks)),
            (f"... not reachable by their owner within {REACHABLE_WITHIN:.0f} s",
             f"{len(self.late)} (slowest {self.slowest_reach:.1f} s)"),
        ]
        width = max(len(name) for name, _ in rows)
        return "\n".join(f"| {name:<{width}} | {value} |" for name, value in rows)


@dataclass
class Tracked:
    """One instance as the run knows it: its owner and what the acknowledged actions imply."""

    instance_id: str
    owner: str
    url: str
    allowed: frozenset[InstanceState] | None = None
    """States it may be in (None: any, it exists); ``deleted``: it must be gone."""
    deleted: bool = False
    last_seen: str = ""


class Ledger:
    """What the portal acknowledged: users that exist, instances and what they may be."""

    def __init__(self) -> None:
        self.users: dict[str, str] = {}
        self.instances: dict[str, Tracked] = {}

    def check(self, portal: int, sessions: dict[str, Browser], users: bool = True) -> list[str]:
        """Every acknowledged write, looked up; returns what is missing or undone."""
        lost = []
        for username, password in self.users.items() if users else ():
            if log_in(Browser(), portal, username, password) != 200:
                lost.append(f"user {username} cannot log in")
        for tracked in self.instances.values():
            status, _, body = sessions[tracked.owner].request(
                f"http://localhost:{portal}/api/instances/{tracked.instance_id}")
            if tracked.deleted:
                if status != 404:
                    lost.append(f"deleted instance {tracked.instance_id} answers {status}")
                continue
            if status != 200:
                lost.append(f"instance {tracked.instance_id} answers {status}")
                continue
            state = S(json.loads(body)["state"])
            tracked.last_seen = state.value
            if tracked.allowed is not None and state not in tracked.allowed:
                lost.append(f"instance {tracked.instance_id} is {state.value}, which an "
                            f"acknowledged action ruled out")
        return lost


class FaultRun:
    """See the module docstring. ``env``: a test stack's settings (:func:`fault_env` added)."""

    def __init__(self, env: dict[str, str], docker_client: docker.DockerClient, *,
                 seed: int, max_pause: float = 1.0,
                 say: Callable[[str], None] = print) -> None:
        self.env = env
        self.docker = docker_client
        self.random = random.Random(seed)
        self.max_pause = max_pause
        self.say = say
        self.data = Path(env["DIT4C_DATA_DIR"])
        self.portal = int(env["DIT4C_PORTAL_PORT"])
        self.ledger = Ledger()
        self.counts = Counts()
        self.sessions: dict[str, Browser] = {}
        self.stack: StackProcess | None = None
        self.image_id = ""

    # -- the stack -----------------------------------------------------------------------

    def start(self) -> None:
        self.stack = StackProcess(self.env, ["--restart-children"])
        self.stack.wait_ready()

    def _serving(self) -> None:
        """Start the stack's process again; return once the portal answers (the router and
        the node daemon come up meanwhile: what the cycle checks waits for them itself)."""
        self.stack = StackProcess(self.env, ["--restart-children"])
        deadline = time.monotonic() + 120
        while get_status(self.portal, "/api/health") != 200:
            if self.stack.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the stack did not come back:\n{self.stack.output()}")
            time.sleep(0.1)

    def close(self) -> None:
        if self.stack is not None:
            self.stack.kill()

    def _kill(self, target: str) -> None:
        assert self.stack is not None
        running = children(self.data)
        if target in ("stack", "all"):
            self.stack.process.kill()
            self.stack.process.wait(10)
        for name, pid in running.items():  # "all": the image server too
            if target in (name, "all"):
                os.killpg(pid, signal.SIGKILL)

    def _restart(self, target: str, before: dict[str, int]) -> None:
        assert self.stack is not None
        if target in ("stack", "all"):
            self.stack.kill()  # its pipes; the process is already gone
            self._serving()
            return
        deadline = time.monotonic() + 60
        while True:  # the stack starts the child again
            pid = children(self.data).get(target)
            if pid is not None and pid != before.get(target) and alive(pid):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"{target} was not started again:\n{self.stack.output()}")
            time.sleep(0.1)

    # -- users ---------------------------------------------------------------------------

    def set_up(self, users: int = 2) -> None:
        password = (self.data / "admin-password").read_text().strip()
        admin = Browser()
        assert log_in(admin, self.portal, "admin", password) == 200
        self.sessions["admin"] = admin
        for n in range(users):
            self._create_user(f"user{n}")
        status, _, body = admin.request(f"http://localhost:{self.portal}/api/images")
        assert status == 200, body
        (tool,) = [i for i in json.loads(body)["images"]
                   if i["image"] == "dit4c/test-tool:busybox"]
        self.image_id = tool["id"]

    def _create_user(self, username: str) -> bool:
        password = f"{username}-password-1"
        status, _, _ = self.sessions["admin"].request(
            f"http://localhost:{self.portal}/api/users", "POST",
            {"username": username, "password": password})
        if status != 201:
            return False
        self.ledger.users[username] = password
        session = Browser()
        assert log_in(session, self.portal, username, password) == 200
        self.sessions[username] = session
        return True

    # -- one cycle -----------------------------------------------------------------------

    def cycle(self) -> None:
        marks = [time.monotonic()]
        running = self._running_untouched()
        action, touched = self._act()
        if touched is not None:
            running.pop(touched, None)
        time.sleep(self.random.uniform(0, self.max_pause))
        marks.append(time.monotonic())
        target = self.random.choices(TARGETS, WEIGHTS)[0]
        before = children(self.data)
        self._kill(target)
        self._restart(target, before)
        marks.append(time.monotonic())
        self.counts.cycles += 1
        self.counts.kills[target] += 1
        # Only the stack's process holds what the portal acknowledged: users are checked (a
        # login each) when it was killed; instances every time.
        lost = self.ledger.check(self.portal, self.sessions,
                                 users=target in ("stack", "all"))
        self.counts.lost += [f"cycle {self.counts.cycles} ({action}, {target}): {x}"
                             for x in lost if x not in self.counts.lost]
        marks.append(time.monotonic())
        self._check_reachable(running, f"cycle {self.counts.cycles} ({action}, {target})")
        marks.append(time.monotonic())
        phases = "/".join(f"{b - a:.1f}" for a, b in itertools.pairwise(marks))
        self.say(f"cycle {self.counts.cycles}: {action}, killed {target}; "
                 f"{len(self.ledger.instances)} instances, {len(lost)} lost; "
                 f"act/restart/check/reach {phases} s")

    def _act(self) -> tuple[str, str | None]:
        """Do one user action (chosen among those that make sense now); returns its name and
        the instance it touched."""
        states = self._states()
        by_state: dict[str, list[str]] = {}
        for known, state in states.items():
            by_state.setdefault(state, []).append(known)
        live = sum(1 for s in states.values() if s in LIVE)
        choices: list[tuple[str, list[str]]] = []
        if live < MAX_INSTANCES:
            choices += [("launch", [""])] * 2
        choices += [("stop", by_state.get(S.RUNNING, [])),
                    ("save", by_state.get(S.STOPPED, [])),
                    ("discard", by_state.get(S.STOPPED, []) + by_state.get(S.FAILED, [])),
                    ("delete", by_state.get(S.SAVED, []) + by_state.get(S.DISCARDED, [])
                     + by_state.get(S.FAILED, [])),
                    ("create user", [""] if len(self.ledger.users) < 3 else [])]
        possible = [c for c in choices if c[1]] or [("nothing", [""])]
        action, candidates = self.random.choice(possible)
        chosen: str = self.random.choice(candidates)
        instance_id = chosen or None
        acknowledged = self._do(action, instance_id)
        if acknowledged:
            self.counts.acknowledged += 1
            self.counts.actions[action] = self.counts.actions.get(action, 0) + 1
        return action, instance_id

    def _do(self, action: str, instance_id: str | None) -> bool:
        if action == "nothing":  # everything is moving: the kill comes while it does
            return False
        if action == "create user":
            return self._create_user(f"user{len(self.ledger.users)}")
        base = f"http://localhost:{self.portal}/api/instances"
        if action == "launch":
            owner = self.random.choice([u for u in self.sessions if u != "admin"])
            status, _, body = self.sessions[owner].request(base, "POST",
                                                           {"image_id": self.image_id})
            if status != 202:
                return False
            made = json.loads(body)["id"]
            url = f"http://{made}.localhost:{self.env['DIT4C_ROUTER_PORT']}"
            self.ledger.instances[made] = Tracked(made, owner, url)
            return True
        assert instance_id is not None
        tracked = self.ledger.instances[instance_id]
        session = self.sessions[tracked.owner]
        if action == "delete":
            status, _, _ = session.request(f"{base}/{instance_id}", "DELETE")
        else:
            status, _, _ = session.request(f"{base}/{instance_id}/{action}", "POST")
        if status >= 300:
            return False  # the state moved meanwhile (409): nothing was acknowledged
        if action == "delete":
            tracked.deleted = True
        else:
            tracked.allowed = {"stop": AFTER_STOP, "save": AFTER_SAVE,
                               "discard": AFTER_DISCARD}[action]
        return True

    def _states(self) -> dict[str, S]:
        status, _, body = self.sessions["admin"].request(
            f"http://localhost:{self.portal}/api/instances?all=true")
        assert status == 200, body
        return {i["id"]: S(i["state"]) for i in json.loads(body)["instances"]}

    def _running_untouched(self) -> dict[str, Tracked]:
        states = self._states()
        return {i: t for i, t in self.ledger.instances.items()
                if states.get(i) == S.RUNNING and not t.deleted}

    def _check_reachable(self, running: dict[str, Tracked], where: str) -> None:
        started = time.monotonic()
        for tracked in running.values():
            status, final, body = reach(self.sessions[tracked.owner], tracked.url + "/",
                                        within=REACHABLE_WITHIN * 2)
            took = time.monotonic() - started
            self.counts.reach_checks += 1
            self.counts.slowest_reach = max(self.counts.slowest_reach, took)
            if status != 200 or b"busybox httpd" not in body:
                self.counts.late.append(f"{where}: {tracked.instance_id} answered {status} "
                                        f"({final}) after {took:.0f} s")
            elif took > REACHABLE_WITHIN:
                self.counts.late.append(f"{where}: {tracked.instance_id} took {took:.0f} s")

    # -- at the end ----------------------------------------------------------------------

    def settle(self, timeout: float) -> None:
        """Wait (at most ``timeout`` s) for transitions to end and strays to be removed, then
        count what is left: pods without a live instance, instances stuck past deadline."""
        deadline = time.monotonic() + timeout
        while True:
            states = self._states()
            orphans = self._orphan_pods(states)
            moving = [i for i, s in states.items() if s in TRANSITIONAL]
            if (not orphans and not moving) or time.monotonic() > deadline:
                break
            time.sleep(1)
        self.counts.orphan_pods = orphans
        self.counts.stuck = self._stuck()
        self.counts.lost += [x for x in self.ledger.check(self.portal, self.sessions)
                             if x not in self.counts.lost]

    def _orphan_pods(self, states: dict[str, S]) -> list[str]:
        node_id = json.loads((self.data / "node" / "node.json").read_text())["node_id"]
        # One listing, no inspect per container: the node removes containers meanwhile (a
        # sandbox's unused storage helper, a pod being discarded), and an inspect of one gone
        # since the listing fails with 404.
        running = self.docker.api.containers(filters={"label": f"{pod.LABEL_NODE}={node_id}"})
        pods = {(row.get("Labels") or {}).get(pod.LABEL_INSTANCE, "") for row in running}
        return sorted(f"{i} ({states[i].value if i in states else 'unknown'})"
                      for i in pods if i and states.get(i) not in LIVE)

    def _stuck(self) -> list[str]:
        status, _, body = self.sessions["admin"].request(
            f"http://localhost:{self.portal}/api/instances?all=true")
        assert status == 200, body
        now = time.time()
        stuck = []
        for instance in json.loads(body)["instances"]:
            if S(instance["state"]) not in TRANSITIONAL:
                continue
            updated = _epoch(instance.get("updated_at") or "")
            timeout = float(self.env["DIT4C_TRANSITION_TIMEOUT_SECONDS"])
            if now - updated > timeout + 10:
                stuck.append(f"{instance['id']} {instance['state']} since "
                             f"{instance.get('updated_at')}")
        return stuck


def _epoch(iso: str) -> float:
    try:
        return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return time.time()


def run_cycles(run: FaultRun, cycles: int) -> Counts:
    started = time.monotonic()
    run.start()
    run.set_up()
    for _ in range(cycles):
        run.cycle()
    run.settle(timeout=float(run.env["DIT4C_TRANSITION_TIMEOUT_SECONDS"]) + 30)
    run.counts.seconds = time.monotonic() - started
    return run.counts


