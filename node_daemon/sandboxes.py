"""Ready pod sandboxes: a pod's namespace holder and helpers, made before an instance needs them.

Most of a launch used to be the pod's own start: the namespace holder's create and start (its
network set-up on the bridge), the listener container's start and its Python start (aiohttp,
the auth helper, JWT, cryptography), then the tunnel's dial; then the storage helper's
container start, its mount and its file server's Python start (boto3). A *sandbox* is those
containers made ahead of time:

- ``netns``: the helpers image running ``sleep infinity``, on the pods network, hostname
  :data:`HOSTNAME` (the tool sees it; a sandbox is made before its instance is known);
- ``listener``: ``python3 -m helpers.listener`` with only :data:`protocol.sandbox.ENV_SANDBOX`
  in its environment and its stdin open: imported, warmed up, waiting for a bind;
- ``storage`` (if the pool keeps storage helpers, or for a launch with storage):
  ``python3 -m helpers.storage`` with only ``ENV_SANDBOX`` and its stdin open, the privileges
  of :data:`node_daemon.storage.PRIVILEGES` and the sandbox's own storage volume
  (:func:`storage_volume`) bound ``rshared``: its FUSE mount made, its file server imported,
  waiting for a bind.

At launch a sandbox is *claimed* for the instance and *bound*: the node attaches to the listener
and writes the instance's listener settings (:mod:`protocol.sandbox`), and to the storage
helper and writes the instance's storage; the listener starts the auth gate and dials the
routers, the storage helper checks the store and serves its mount (``ready``), while the tool
is made, joined to the sandbox's namespace, and started once the storage is ready; the listener
then pushes ``ready`` when the tool answers. With no free sandbox the launch makes one for
itself (the same containers, bound the same way), so there is one launch path. A launch
without storage that claims a sandbox with a storage helper removes that helper and its
volume (off the launch's path).

Labels: ``dit4c.node``, ``dit4c.sandbox`` (the sandbox id), ``dit4c.role`` and the node's extra
labels; a pooled one has no ``dit4c.instance`` (labels cannot change, and it is made before its
instance exists), one made by a launch has it. The instance's own containers carry
``dit4c.sandbox`` too. The storage volume cannot be renamed either: it is the sandbox's
(``dit4c-sandbox-<id>-storage``, labelled with the sandbox), found by that label and removed
with the sandbox.

**The claim is the holder's name.** A free sandbox's holder is ``dit4c-sandbox-<id>-netns``; a
claim renames it ``dit4c-<instance id>-netns`` (one atomic engine call, kept by the engine across
restarts of the daemon: no other record to keep in step). A sandbox made by a launch is created
under the instance's name, claimed from its first container on. Hence:

1. a sandbox is bound only after its claim, so a free one (by name) was never bound: a
   restarted daemon may keep it;
2. a claimed sandbox belongs to its instance for good: it is stopped and removed with the
   instance's pod, never given back (its listener held the instance's secrets);
3. the listener refuses a bind for a second instance, so even a claim gone wrong cannot make
   one sandbox serve two instances;
4. a sandbox that lost a container, or made from another recipe (:data:`LABEL_RECIPE`), is
   removed by :meth:`SandboxPool.reconcile`; the daemon removes the free ones when it stops.

**Sizing.** The pool keeps ``size`` free sandboxes (``DIT4C_NODE_SANDBOXES``), made one at a
time and never while a launch is under way (a sandbox's start would take CPU from the launch it
is there to speed up). A free sandbox costs a sleeping holder and an idle listener (about
40 MB of memory, no CPU), and an idle storage helper (see docs/node-daemon.md, Pod sandboxes)
unless the pool keeps none (``DIT4C_NODE_SANDBOX_STORAGE=off``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import socket
import struct
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import docker
import docker.errors

from node_daemon import storage
from node_daemon.errors import LaunchError
from node_daemon.network import ensure_pods_network
from protocol import pod
from protocol.sandbox import BOUND, ENV_SANDBOX, ERROR, READY, bind_line, parse_answer

log = logging.getLogger("dit4c.node.sandboxes")

LABEL_SANDBOX = "dit4c.sandbox"
LABEL_RECIPE = "dit4c.sandbox.recipe"
"""What the sandbox was made from (helpers image id, pods network and gateway, listener
command and options): a free sandbox of another recipe is replaced."""
HOSTNAME = "dit4c"
REQUIRED_ROLES = (pod.ROLE_NETNS, pod.ROLE_LISTENER)
SANDBOX_ROLES = (*REQUIRED_ROLES, pod.ROLE_STORAGE)
"""Every sandbox has the holder and the listener; the storage helper is there when asked."""
FREE_PREFIX = "dit4c-sandbox-"
RECIPE_VERSION = 2
"""Part of :data:`LABEL_RECIPE`: sandboxes made by an older daemon (version 1: no storage
helper) are replaced."""
STORAGE_STOP_SECONDS = 5
"""Grace of an unused storage helper's stop: unbound, it has nothing to store, and a stop (not
a kill) detaches its mount, so its volume can go at once."""

# One core each: a helper idles at almost nothing, but a cold sandbox's start (Python importing
# aiohttp) is on the launch's critical path, and half a core made launches 3.4x a bare run.
HELPER_LIMITS: Mapping[str, Any] = {"mem_limit": "256m", "nano_cpus": 1_000_000_000,
                                    "pids_limit": 128}
HELPER_SECURITY: Mapping[str, Any] = {"cap_drop": ["ALL"], "security_opt": ["no-new-privileges"],
                                      "privileged": False, "init": True}


@dataclass(frozen=True)
class Sandbox:
    id: str
    containers: Mapping[str, str]
    """Container id by role (netns, listener)."""
    statuses: Mapping[str, str]
    """Docker's state by role when last seen."""

    @property
    def netns(self) -> str:
        return self.containers[pod.ROLE_NETNS]

    @property
    def listener(self) -> str:
        return self.containers[pod.ROLE_LISTENER]

    @property
    def storage(self) -> str | None:
        return self.containers.get(pod.ROLE_STORAGE)


def storage_volume(sandbox_id: str) -> str:
    """The name of the sandbox's storage volume (what its storage helper mounts into)."""
    return f"{FREE_PREFIX}{sandbox_id}-{pod.ROLE_STORAGE}"


def holder_name(instance_id: str) -> str:
    """The name of a claimed sandbox's holder (as ``pods.container_name`` names a pod's)."""
    return f"dit4c-{instance_id}-{pod.ROLE_NETNS}"


def claimant(row: Mapping[str, Any]) -> str | None:
    """The instance that claimed the sandbox whose holder's Docker row is ``row``; None if free
    (or not a holder)."""
    labels = row.get("Labels") or {}
    if labels.get(pod.LABEL_ROLE) != pod.ROLE_NETNS or LABEL_SANDBOX not in labels:
        return None
    name = ((row.get("Names") or ["/"])[0]).lstrip("/")
    if name.startswith(FREE_PREFIX) or not name.endswith(f"-{pod.ROLE_NETNS}"):
        return None
    return name.removeprefix("dit4c-").removesuffix(f"-{pod.ROLE_NETNS}") or None


class BindRefused(LaunchError):
    """The helper answered ``error``: ``reason`` is its own words."""

    def __init__(self, helper: str, reason: str) -> None:
        super().__init__(f"{helper} refused its settings: {reason}")
        self.reason = reason


class Binding:
    """One attach to a sandbox's helper, the listener or the storage helper (stdin and
    stdout): send a bind, hear its answers (:mod:`protocol.sandbox`).

    Docker multiplexes the attached stdout (no TTY): frames of an 8-byte header (stream,
    0, 0, 0, big-endian length) and their bytes. Closing the attach leaves the helper's
    stdin open (it was created with ``stdin_open`` and without ``stdin_once``).
    """

    def __init__(self, client: docker.DockerClient, container_id: str,
                 helper: str = "the listener") -> None:
        self.helper = helper
        try:
            self._io = client.api.attach_socket(
                container_id, params={"stdin": 1, "stdout": 1, "stream": 1})
        except docker.errors.APIError as exc:
            raise LaunchError(f"cannot reach {helper}: {exc.explanation or exc}") from exc
        self._sock: socket.socket = getattr(self._io, "_sock", self._io)
        self._frames = b""
        self._out = b""
        self._answers: deque[tuple[str, str]] = deque()

    def close(self) -> None:
        # The SocketIO docker-py returns does not close the socket it wraps.
        with contextlib.suppress(OSError):
            self._io.close()
        with contextlib.suppress(OSError):
            self._sock.close()

    def bind(self, settings: Mapping[str, str], timeout: float) -> None:
        """Send the instance's settings; return once the helper took them."""
        try:
            self._sock.sendall(bind_line(settings))
        except OSError as exc:
            raise LaunchError(f"cannot bind {self.helper}: {exc}") from exc
        if self.wait(BOUND, timeout) is None:
            raise LaunchError(f"{self.helper} did not take its settings within {timeout:.0f} s")

    def wait_ready(self, timeout: float) -> bool:
        """True once the helper says ready (the listener: the tool answers; the storage
        helper: the storage is mounted); False after ``timeout``."""
        return self.wait(READY, timeout) is not None

    def wait(self, kind: str, timeout: float) -> str | None:
        """The value of the next ``kind`` answer, None after ``timeout``; BindRefused if the
        helper refused the bind, LaunchError if its output ended (it exited)."""
        deadline = time.monotonic() + timeout
        while True:
            while self._answers:
                got, value = self._answers.popleft()
                if got == ERROR:
                    raise BindRefused(self.helper, value)
                if got == kind:
                    return value
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self._sock.settimeout(remaining)
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                return None
            except OSError as exc:
                raise LaunchError(f"lost the answers of {self.helper}: {exc}") from exc
            if not data:
                raise LaunchError(f"{self.helper} exited")
            self._feed(data)

    def _feed(self, data: bytes) -> None:
        self._frames += data
        while len(self._frames) >= 8:
            stream, size = self._frames[0], struct.unpack(">I", self._frames[4:8])[0]
            if len(self._frames) < 8 + size:
                break
            payload, self._frames = self._frames[8:8 + size], self._frames[8 + size:]
            if stream == 1:
                self._out += payload
        *lines, self._out = self._out.split(b"\n")
        for line in lines:
            answer = parse_answer(line)
            if answer is not None:
                self._answers.append(answer)


class SandboxPool:
    """The node's sandboxes: free ones ready to claim, and the claimed ones (see the module
    docstring). Synchronous (call it from a thread) and thread-safe."""

    def __init__(self, client: docker.DockerClient, *, node_id: str, network: str,
                 helpers_image: str, listener_command: Sequence[str],
                 labels: Mapping[str, str], size: int = 0,
                 listener_options: Mapping[str, Any] | None = None,
                 storage_command: Sequence[str] | None = None) -> None:
        self._client = client
        self.node_id = node_id
        self.network = network
        self.helpers_image = helpers_image
        self.listener_command = list(listener_command)
        self.extra_labels = dict(labels)
        self.size = size
        self.listener_options = dict(listener_options or {})
        """More of the listener container's spec (its token tmpfs) for every sandbox."""
        self.storage_command = list(storage_command or ())
        """The storage helper's command; empty: free sandboxes have no storage helper (a
        launch with storage adds one to its sandbox)."""
        self._lock = threading.Lock()
        self._free: deque[Sandbox] = deque()
        self._making: set[str] = set()
        self._busy = 0

    @property
    def free_roles(self) -> tuple[str, ...]:
        """The roles of a free sandbox of this pool."""
        return SANDBOX_ROLES if self.storage_command else REQUIRED_ROLES

    # -- finding -----------------------------------------------------------------------------

    def labels(self, sandbox_id: str, role: str) -> dict[str, str]:
        return {**self.extra_labels, pod.LABEL_NODE: self.node_id, LABEL_SANDBOX: sandbox_id,
                pod.LABEL_ROLE: role}

    def _rows(self, sandbox_id: str | None = None) -> list[dict[str, Any]]:
        """Docker's rows of this node's sandbox containers (one sandbox's, if given)."""
        label = LABEL_SANDBOX if sandbox_id is None else f"{LABEL_SANDBOX}={sandbox_id}"
        rows = self._client.api.containers(all=True, filters={"label": [
            f"{pod.LABEL_NODE}={self.node_id}", label]})
        # The instance's own containers name their sandbox too; they are not part of it (a
        # pod's storage container of before sandboxes had storage helpers has no recipe).
        return [row for row in rows
                if (row.get("Labels") or {}).get(pod.LABEL_ROLE) in SANDBOX_ROLES
                and LABEL_RECIPE in (row.get("Labels") or {})]

    def _by_sandbox(self) -> dict[str, dict[str, dict[str, Any]]]:
        found: dict[str, dict[str, dict[str, Any]]] = {}
        for row in self._rows():
            labels = row["Labels"]
            found.setdefault(labels[LABEL_SANDBOX], {})[labels.get(pod.LABEL_ROLE, "?")] = row
        return found

    def claims(self) -> dict[str, str]:
        """Every claim on this node: instance id -> sandbox id."""
        found = {}
        for row in self._rows():
            instance_id = claimant(row)
            if instance_id is not None:
                found[instance_id] = row["Labels"][LABEL_SANDBOX]
        return found

    # -- making ------------------------------------------------------------------------------

    def recipe(self) -> tuple[str, str]:
        """(recipe hash, the pods network's gateway) for sandboxes made now."""
        # Not Docker's "host-gateway": that is docker0's address, and the host's services
        # (portal, edge routers of the local stack) listen on the pods bridge's gateway only.
        # Asking each time also brings back a pods network someone removed.
        gateway = ensure_pods_network(self._client, self.network, self.extra_labels)
        try:
            image_id = self._client.images.get(self.helpers_image).id
        except docker.errors.ImageNotFound:
            raise LaunchError(f"the helpers image {self.helpers_image} is not on this node"
                              ) from None
        text = json.dumps([RECIPE_VERSION, image_id, self.network, gateway,
                           self.listener_command, self.storage_command,
                           sorted(map(str, self.listener_options.items()))])
        return hashlib.sha256(text.encode()).hexdigest()[:16], gateway

    def _make(self, sandbox_id: str, claimed_by: str | None = None,
              with_storage: bool = False) -> Sandbox:
        """Create and start the containers of sandbox ``sandbox_id`` (reserved by the caller),
        the storage helper too if ``with_storage``, claimed by ``claimed_by`` from its creation
        if given; on failure remove what was made and raise LaunchError."""
        recipe, gateway = self.recipe()
        made: dict[str, str] = {}
        holder = holder_name(claimed_by) if claimed_by else f"{FREE_PREFIX}{sandbox_id}-netns"
        try:
            netns = self._create(holder, sandbox_id, pod.ROLE_NETNS, {
                "image": self.helpers_image, "command": ["sleep", "infinity"],
                "network": self.network, "hostname": HOSTNAME,
                "extra_hosts": {"host.docker.internal": gateway},
                "mem_limit": "32m", "pids_limit": 16, **HELPER_SECURITY},
                recipe=recipe, claimed_by=claimed_by)
            made[pod.ROLE_NETNS] = netns
            self._client.api.start(netns)
            listener = self._create(f"{FREE_PREFIX}{sandbox_id}-listener", sandbox_id,
                                    pod.ROLE_LISTENER, {
                "image": self.helpers_image, "command": self.listener_command,
                "environment": {ENV_SANDBOX: sandbox_id}, "stdin_open": True,
                "network_mode": f"container:{netns}", **HELPER_SECURITY, **HELPER_LIMITS,
                **self.listener_options}, recipe=recipe, claimed_by=claimed_by)
            made[pod.ROLE_LISTENER] = listener
            self._client.api.start(listener)
            if with_storage:
                made[pod.ROLE_STORAGE] = self._add_storage(sandbox_id, netns, recipe, claimed_by)
        except docker.errors.APIError as exc:
            self._remove(sandbox_id, made.values())
            raise LaunchError(f"cannot make a pod sandbox: {exc.explanation or exc}") from exc
        except BaseException:
            self._remove(sandbox_id, made.values())
            raise
        return Sandbox(sandbox_id, made, dict.fromkeys(made, "running"))

    def _create(self, name: str, sandbox_id: str, role: str, spec: dict[str, Any], *,
                recipe: str, claimed_by: str | None) -> str:
        labels = {**self.labels(sandbox_id, role), LABEL_RECIPE: recipe}
        if claimed_by is not None:
            # Made for an instance: labelled as its pod's containers always were.
            labels[pod.LABEL_INSTANCE] = claimed_by
        made = self._client.containers.create(name=name, labels=labels, detach=True, **spec)
        return str(made.id)

    def storage_path(self, sandbox_id: str, claimed_by: str | None = None) -> str:
        """The sandbox's storage volume (made if missing) by its path on the engine's host:
        what the storage helper binds ``rshared`` and the tool ``rslave``."""
        name = storage_volume(sandbox_id)
        labels = self.labels(sandbox_id, pod.ROLE_STORAGE)
        if claimed_by is not None:
            labels[pod.LABEL_INSTANCE] = claimed_by
        try:
            self._client.volumes.get(name)
        except docker.errors.NotFound:
            self._client.volumes.create(name, labels=labels)
        return storage.volume_path(self._client, name)

    def _add_storage(self, sandbox_id: str, netns: str, recipe: str,
                     claimed_by: str | None) -> str:
        """Create and start the sandbox's storage helper (its volume too); its id."""
        helper = self._create(f"{FREE_PREFIX}{sandbox_id}-{pod.ROLE_STORAGE}", sandbox_id,
                              pod.ROLE_STORAGE, {
            "image": self.helpers_image, "command": self.storage_command,
            "environment": {ENV_SANDBOX: sandbox_id}, "stdin_open": True,
            "network_mode": f"container:{netns}", **HELPER_SECURITY, **HELPER_LIMITS,
            **storage.PRIVILEGES,
            "mounts": storage.helper_mounts(self.storage_path(sandbox_id, claimed_by))},
            recipe=recipe, claimed_by=claimed_by)
        self._client.api.start(helper)
        return helper

    def add_storage(self, sandbox: Sandbox, claimed_by: str) -> str:
        """Give a claimed sandbox made without one a storage helper (a launch with storage
        that took a free sandbox of a pool without storage helpers); its container id."""
        recipe, _ = self.recipe()
        try:
            return self._add_storage(sandbox.id, sandbox.netns, recipe, claimed_by)
        except docker.errors.APIError as exc:
            if exc.status_code == 409:  # made by an earlier, interrupted attempt
                rows = {r["Labels"][pod.LABEL_ROLE]: r for r in self._rows(sandbox.id)}
                if pod.ROLE_STORAGE in rows:
                    return str(rows[pod.ROLE_STORAGE]["Id"])
            raise LaunchError(f"cannot make the storage helper: {exc.explanation or exc}"
                              ) from exc

    def remove_storage(self, sandbox_id: str) -> None:
        """Remove the sandbox's storage helper (stopped first, so it detaches its mount) and
        its volume: a claim that needs no storage, a free sandbox that goes."""
        rows = [r for r in self._rows(sandbox_id)
                if r["Labels"].get(pod.LABEL_ROLE) == pod.ROLE_STORAGE]
        for row in rows:
            if row.get("State") == "running":
                with contextlib.suppress(docker.errors.NotFound):
                    self._client.api.stop(row["Id"], timeout=STORAGE_STOP_SECONDS)
        self.remove_containers(row["Id"] for row in rows)
        self.remove_volumes(sandbox_id)

    def remove_volumes(self, sandbox_id: str) -> None:
        """Remove the sandbox's volumes (its storage volume), detaching a mount that a killed
        storage helper left there."""
        for volume in self._client.api.volumes(filters={"label": [
                f"{pod.LABEL_NODE}={self.node_id}",
                f"{LABEL_SANDBOX}={sandbox_id}"]}).get("Volumes") or []:
            storage.remove_volume(self._client, volume["Name"], self.helpers_image,
                                  self.extra_labels)

    def _remove(self, sandbox_id: str, container_ids: Iterable[str]) -> None:
        """Remove a sandbox that never served: its storage helper stopped first (see
        :meth:`remove_storage`), then every container and volume."""
        self.remove_storage(sandbox_id)
        self.remove_containers(container_ids)

    def remove_containers(self, container_ids: Iterable[str]) -> None:
        for container_id in container_ids:
            try:
                self._client.api.remove_container(container_id, force=True, v=True)
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as exc:
                if exc.status_code != 409:  # 409: removal already in progress
                    raise

    # -- claiming ----------------------------------------------------------------------------

    def acquire(self, instance_id: str, with_storage: bool = False) -> Sandbox:
        """The sandbox of ``instance_id``: the one claimed before if it still has its holder
        and listener (in any state: the caller starts what is stopped), else a free one
        (claimed now), else one made now under the instance's name (with a storage helper if
        ``with_storage``)."""
        with self._lock:
            by_sandbox = self._by_sandbox()
            claimed = next((sandbox_id for sandbox_id, rows in by_sandbox.items()
                            if pod.ROLE_NETNS in rows
                            and claimant(rows[pod.ROLE_NETNS]) == instance_id), None)
            stale: str | None = None
            if claimed is not None:
                rows = by_sandbox[claimed]
                if set(REQUIRED_ROLES) <= set(rows):
                    return Sandbox(claimed, {r: row["Id"] for r, row in rows.items()},
                                   {r: row.get("State", "?") for r, row in rows.items()})
                # Half made before a crash: made again below, under the same name.
                stale = claimed
            else:
                sandbox = self._take_free(by_sandbox, instance_id)
                if sandbox is not None:
                    return sandbox
            sandbox_id = uuid.uuid4().hex[:12]
            self._making.add(sandbox_id)
        try:
            if stale is not None:
                self._remove(stale, [row["Id"] for row in by_sandbox[stale].values()])
            log.info("no free sandbox: making %s for %s", sandbox_id, instance_id)
            return self._make(sandbox_id, claimed_by=instance_id, with_storage=with_storage)
        finally:
            with self._lock:
                self._making.discard(sandbox_id)

    def _take_free(self, found: Mapping[str, Mapping[str, dict[str, Any]]],
                   instance_id: str) -> Sandbox | None:
        """A free sandbox whose containers still run, claimed for ``instance_id`` (called with
        the lock held)."""
        while self._free:
            sandbox = self._free.popleft()
            rows = found.get(sandbox.id, {})
            if all(rows.get(r, {}).get("State") == "running" for r in sandbox.containers):
                try:
                    self._client.api.rename(sandbox.netns, holder_name(instance_id))
                except docker.errors.APIError as exc:
                    log.warning("cannot claim sandbox %s: %s", sandbox.id,
                                exc.explanation or exc)
                else:
                    log.info("sandbox %s claimed for %s", sandbox.id, instance_id)
                    return sandbox
            else:
                log.warning("free sandbox %s lost a container", sandbox.id)
            self._remove(sandbox.id, [row["Id"] for row in rows.values()])
        return None

    # -- keeping the pool --------------------------------------------------------------------

    @contextlib.contextmanager
    def launching(self) -> Any:
        """Held while a launch runs: the pool is not refilled meanwhile."""
        with self._lock:
            self._busy += 1
        try:
            yield
        finally:
            with self._lock:
                self._busy -= 1

    def wanted(self) -> bool:
        """True when a free sandbox should be made now."""
        with self._lock:
            return self._busy == 0 and len(self._free) + len(self._making) < self.size

    def fill_one(self) -> Sandbox | None:
        """Make one free sandbox if :meth:`wanted`."""
        with self._lock:
            if self._busy or len(self._free) + len(self._making) >= self.size:
                return None
            sandbox_id = uuid.uuid4().hex[:12]
            self._making.add(sandbox_id)
        try:
            sandbox = self._make(sandbox_id, with_storage=bool(self.storage_command))
        except BaseException:
            with self._lock:
                self._making.discard(sandbox_id)
            raise
        with self._lock:  # one step: a reconcile never sees it neither making nor free
            self._making.discard(sandbox_id)
            self._free.append(sandbox)
            free = len(self._free)
        log.info("sandbox %s ready (%d free)", sandbox_id, free)
        return sandbox

    def free(self) -> list[str]:
        with self._lock:
            return [s.id for s in self._free]

    def reconcile(self) -> dict[str, int]:
        """Keep the free sandboxes that can serve (a restarted daemon's pool: never bound,
        since unclaimed), up to ``size``; remove the others (a container missing or stopped,
        another recipe) and whatever is left of a sandbox whose holder is gone (its storage
        volume too). Claimed ones are their instance's. Returns counts (``free``,
        ``removed``: containers)."""
        recipe, _ = self.recipe()
        with self._lock:
            found = self._by_sandbox()
            in_use = {sandbox_id for sandbox_id, rows in found.items()
                      if rows.get(pod.ROLE_NETNS) is not None
                      and claimant(rows[pod.ROLE_NETNS]) is not None}
            keep: list[Sandbox] = []
            doomed: dict[str, list[str]] = {}
            for sandbox_id, rows in found.items():
                if sandbox_id in in_use or sandbox_id in self._making:
                    continue
                healthy = (set(rows) == set(self.free_roles)
                           and all(row.get("State") == "running" for row in rows.values())
                           and all((row.get("Labels") or {}).get(LABEL_RECIPE) == recipe
                                   for row in rows.values()))
                if healthy and len(keep) < self.size:
                    keep.append(Sandbox(sandbox_id, {r: row["Id"] for r, row in rows.items()},
                                        dict.fromkeys(rows, "running")))
                else:
                    doomed[sandbox_id] = [row["Id"] for row in rows.values()]
            volumes = self._client.api.volumes(filters={"label": [
                f"{pod.LABEL_NODE}={self.node_id}", LABEL_SANDBOX]}).get("Volumes") or []
            for volume in volumes:  # a pod removed halfway: its containers are gone
                sandbox_id = (volume.get("Labels") or {}).get(LABEL_SANDBOX, "")
                if sandbox_id not in found and sandbox_id not in self._making:
                    doomed.setdefault(sandbox_id, [])
            self._free = deque(keep)
        for sandbox_id, container_ids in doomed.items():
            self._remove(sandbox_id, container_ids)
        removed = sum(map(len, doomed.values()))
        if doomed:
            log.info("removed %d sandbox(es) that cannot serve (%d container(s))", len(doomed),
                     removed)
        return {"free": len(keep), "removed": removed}

    def drain(self) -> int:
        """Remove the free sandboxes (the daemon stops); returns how many."""
        with self._lock:
            free, self._free = list(self._free), deque()
            self._busy += 1  # nothing is made any more
        for sandbox in free:
            self._remove(sandbox.id, sandbox.containers.values())
        return len(free)
