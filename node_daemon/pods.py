"""Pods over the Docker API.

A pod is one instance's containers, all labelled ``dit4c.node``, ``dit4c.instance`` and
``dit4c.role`` (plus the configured extra labels), sharing one network namespace:

- ``netns`` — owns the namespace: the helpers image running ``sleep infinity`` under Docker's
  init, on the pods network with ``host.docker.internal`` mapped to that bridge's gateway. A
  dedicated holder (rather than the listener) means a helper that crashes or is restarted never
  takes the pod's network away from the tool.
- ``listener`` helper (``python3 -m helpers.listener``) with the tunnel's and the auth helper's
  settings from :mod:`protocol.pod`: it holds the tunnels and runs the auth helper in its own
  process (every stream goes to the auth gate in-process, one loopback hop fewer; the gate
  also listens on ``AUTH_PORT``); unprivileged, all capabilities dropped;
- ``storage`` helper when the start asks for storage: the user's storage mounted (FUSE) inside
  the pod's storage volume, which the tool binds too (privileges, mounts and the rest:
  :mod:`node_daemon.storage`); the tool starts once it is mounted;
- ``tool`` — the user's image with the CPU, memory and PID limits of the start command, its
  own environment only, no Docker socket, not privileged, a few capabilities only,
  ``no-new-privileges`` and a file-descriptor limit (:data:`TOOL_PRIVILEGES`). What the pod may
  reach on the network: :mod:`node_daemon.egress`.

No port is published on the host. Every method here is synchronous (call it from a thread)
and idempotent: run twice, it finds and reuses what the first run made.
"""

from __future__ import annotations

import contextlib
import json
import logging
import posixpath
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import docker
import docker.errors
from docker.types import Ulimit
from docker.utils import parse_repository_tag

from node_daemon import storage
from node_daemon.config import DEFAULT_HELPER_COMMANDS
from node_daemon.errors import LaunchError, PodError
from node_daemon.network import ensure_pods_network
from protocol import pod
from protocol.messages import RegistryAccess, StartInstance

log = logging.getLogger("dit4c.node.pods")

# The tool is someone else's code. Of Docker's default capabilities it keeps what an image
# that starts as root needs to hand itself to its user (an entrypoint's chown, su/gosu, a
# server dropping privileges, signalling its workers, a port below 1024); it loses NET_RAW
# (raw sockets: spoofing, ARP on the pods network), MKNOD, SETFCAP, SETPCAP, FSETID,
# SYS_CHROOT and AUDIT_WRITE. no-new-privileges: no setuid binary gives more than that. A
# root tool stays possible (many images are), with those capabilities only. Files: at most
# TOOL_NOFILE descriptors (else the engine's own limit: a million under systemd; it must be
# at most that, or containers do not start); processes:
# StartInstance.pids_limit.
TOOL_CAPABILITIES = ("CHOWN", "DAC_OVERRIDE", "FOWNER", "SETUID", "SETGID", "KILL",
                     "NET_BIND_SERVICE")
TOOL_NOFILE = 16384
TOOL_PRIVILEGES: Mapping[str, Any] = {
    "cap_drop": ["ALL"], "cap_add": list(TOOL_CAPABILITIES),
    "security_opt": ["no-new-privileges"],
    "ulimits": [Ulimit(name="nofile", soft=TOOL_NOFILE, hard=TOOL_NOFILE)]}

# The listener's renewed tunnel tokens (helpers.listener.tokens): only its user reads them.
LISTENER_TMPFS: Mapping[str, str] = {
    posixpath.dirname(pod.TUNNEL_TOKEN_FILE): f"uid={pod.HELPERS_UID},mode=0700,size=64k"}

# One core each: a helper idles at almost nothing, but its start (Python importing aiohttp) is
# on the launch's critical path, and half a core made launches 3.4x a bare `docker run`.
HELPER_LIMITS: Mapping[str, Any] = {"mem_limit": "256m", "nano_cpus": 1_000_000_000,
                                    "pids_limit": 128}
PROBE_INTERVAL = 0.05
PROBE_SLICE = 5.0
"""Seconds one readiness exec keeps trying before the daemon looks at the containers again."""

# Runs inside the pod's namespace (the netns container has python3): exit 0 once every given
# port (the tool's, then the auth helper's) answers HTTP, 1 when the slice runs out. The auth
# helper is waited for too: "running" means a browser sent to the instance URL gets through.
_PROBE = """
import socket, sys, time
ports, until = [int(p) for p in sys.argv[1].split(",")], time.monotonic() + float(sys.argv[2])
def answers(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"GET / HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n")
            head = b""
            while len(head) < 5:
                chunk = s.recv(5 - len(head))
                if not chunk:
                    break
                head += chunk
            return head.startswith(b"HTTP/")
    except OSError:
        return False
while ports:
    if answers(ports[0]):
        ports.pop(0)
        continue
    if time.monotonic() > until:
        sys.exit(1)
    time.sleep(%s)
""" % PROBE_INTERVAL  # noqa: UP031 - braces of the script would fight format()


# Runs in the storage container: exit 0 once the file argv[1] exists, 1 after argv[2] seconds.
_WAIT_FILE = """
import os, sys, time
until = time.monotonic() + float(sys.argv[2])
while not os.path.exists(sys.argv[1]):
    if time.monotonic() > until:
        sys.exit(1)
    time.sleep(%s)
""" % PROBE_INTERVAL  # noqa: UP031 - as _PROBE


@dataclass(frozen=True)
class PodContainer:
    id: str
    name: str
    role: str
    status: str
    """Docker's state: created, running, exited, ..."""


def _row(row: dict[str, Any]) -> PodContainer:
    names = row.get("Names") or ["?"]
    return PodContainer(row["Id"], names[0].lstrip("/"), row["Labels"].get(pod.LABEL_ROLE, "?"),
                        row.get("State", "?"))


@dataclass(frozen=True)
class PodSettings:
    node_id: str
    network: str = pod.PODS_NETWORK
    helpers_image: str = "dit4c/helpers:dev"
    labels: Mapping[str, str] = field(default_factory=dict)
    helper_commands: Mapping[str, Sequence[str]] = field(
        default_factory=lambda: dict(DEFAULT_HELPER_COMMANDS))


# Prints the modules among its arguments that this python3 cannot import.
_FIND_MODULES = """
import importlib.util, sys
def found(module):
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:
        return False
print(" ".join(m for m in sys.argv[1:] if not found(m)))
"""


def missing_modules(client: docker.DockerClient, image: str, modules: Sequence[str],
                    labels: Mapping[str, str] | None = None) -> set[str]:
    """The Python modules among ``modules`` that ``image``'s ``python3`` cannot import (one
    throwaway container, no network, no capabilities)."""
    output = client.containers.run(image, ["python3", "-c", _FIND_MODULES, *modules],
                                   remove=True, network_mode="none", cap_drop=["ALL"],
                                   labels=dict(labels or {}))
    return set(output.decode(errors="replace").split())


def container_name(instance_id: str, role: str) -> str:
    return f"dit4c-{instance_id}-{role}"


def roles_for(start: StartInstance) -> list[str]:
    roles = [pod.ROLE_NETNS, pod.ROLE_LISTENER]
    if start.storage is not None:
        roles.append(pod.ROLE_STORAGE)
    return [*roles, pod.ROLE_TOOL]


def helper_env(start: StartInstance, role: str) -> dict[str, str]:
    """Each helper's own settings, and nothing else (the contract of protocol/pod.py): the
    listener gets the tunnel's and, since it runs the auth helper, the auth helper's."""
    if role == pod.ROLE_LISTENER:
        return {pod.ENV_TUNNEL_TOKEN: start.tunnel_token,
                pod.ENV_TUNNEL_TOKEN_FILE: pod.TUNNEL_TOKEN_FILE,
                pod.ENV_ROUTER_URLS: ",".join(start.router_urls),
                pod.ENV_HOSTNAME: start.hostname,
                pod.ENV_AUTH_LISTEN: f"127.0.0.1:{pod.AUTH_PORT}",
                pod.ENV_AUTH_UPSTREAM: f"http://127.0.0.1:{start.port}",
                pod.ENV_INSTANCE_ID: start.instance_id,
                pod.ENV_PUBLIC_URL: start.url,
                pod.ENV_OAUTH_CLIENT_ID: start.oauth.client_id,
                pod.ENV_OAUTH_CLIENT_SECRET: start.oauth.client_secret,
                pod.ENV_OAUTH_AUTHORIZE_URL: start.oauth.authorize_url,
                pod.ENV_OAUTH_TOKEN_URL: start.oauth.token_url,
                pod.ENV_OAUTH_JWKS_URL: start.oauth.jwks_url}
    if role == pod.ROLE_STORAGE and start.storage is not None:
        return storage.settings_env(start.storage)
    return {}


def _registry_auth(registry: RegistryAccess | None) -> dict[str, str] | None:
    return {"registrytoken": registry.token} if registry is not None else None


class PodRunner:
    """Creates, checks, stops, commits and removes pods on ``client`` for one node.

    Methods raise :class:`LaunchError` (with a user-facing reason) when a pod cannot come up,
    and :class:`PodError` when the engine refuses other work; removing what is already gone is
    success. Engine connection errors (``docker.errors.DockerException``) propagate: the
    caller retries later.
    """

    def __init__(self, client: docker.DockerClient, settings: PodSettings) -> None:
        self._client = client
        self.settings = settings
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="dit4c-pod")
        self._pulls = ThreadPoolExecutor(max_workers=4, thread_name_prefix="dit4c-pull")
        self._modules: dict[str, dict[str, bool]] = {}
        """Per helpers image id: helper module -> the image has it (images do not change)."""

    def close(self) -> None:
        self._pulls.shutdown(wait=True)
        self._pool.shutdown(wait=True)

    @property
    def client(self) -> docker.DockerClient:
        return self._client

    def pods_gateway(self) -> str:
        # Not Docker's "host-gateway": that is docker0's address, and the host's services
        # (portal, edge routers of the local stack) listen on the pods bridge's gateway only.
        # Asking each time also brings back a pods network someone removed.
        return ensure_pods_network(self._client, self.settings.network, self.settings.labels)

    # -- finding -------------------------------------------------------------------------

    def labels(self, instance_id: str, role: str) -> dict[str, str]:
        return {**self.settings.labels, pod.LABEL_NODE: self.settings.node_id,
                pod.LABEL_INSTANCE: instance_id, pod.LABEL_ROLE: role}

    def _filters(self, instance_id: str | None = None) -> dict[str, Any]:
        labels = [f"{pod.LABEL_NODE}={self.settings.node_id}"]
        if instance_id is not None:
            labels.append(f"{pod.LABEL_INSTANCE}={instance_id}")
        return {"label": labels}

    def containers(self, instance_id: str) -> dict[str, PodContainer]:
        """The pod's containers by role (any status), from one listing call (never racing a
        concurrent removal the way a list-then-inspect does)."""
        rows = self._client.api.containers(all=True, filters=self._filters(instance_id))
        return {row["Labels"].get(pod.LABEL_ROLE, "?"): _row(row) for row in rows}

    def instances(self) -> dict[str, list[str]]:
        """Every instance id that has a container or volume of this node: what it has."""
        found: dict[str, list[str]] = {}
        filters = self._filters()
        for row in self._client.api.containers(all=True, filters=filters):
            found.setdefault(row["Labels"].get(pod.LABEL_INSTANCE, ""), []).append("container")
        for volume in self._client.api.volumes(filters=filters).get("Volumes") or []:
            labels = volume.get("Labels") or {}
            found.setdefault(labels.get(pod.LABEL_INSTANCE, ""), []).append("volume")
        found.pop("", None)
        return found

    # -- launching -----------------------------------------------------------------------

    def ensure_image(self, image: str, registry: RegistryAccess | None,
                     progress: Callable[[int], None]) -> None:
        """Use ``image`` if present; else pull it, calling ``progress(percent)`` as it goes."""
        try:
            self._client.images.get(image)
            return
        except docker.errors.ImageNotFound:
            pass
        except docker.errors.APIError as exc:
            raise LaunchError(f"image reference {image!r} is invalid: "
                              f"{exc.explanation or exc}") from exc
        repository, tag = parse_repository_tag(image)
        totals: dict[str, tuple[int, int]] = {}
        last = -1
        try:
            for event in self._client.api.pull(repository, tag=tag or "latest", stream=True,
                                               decode=True,
                                               auth_config=_registry_auth(registry)):
                if "error" in event:
                    raise LaunchError(f"pulling {image} failed: {event['error']}")
                detail = event.get("progressDetail") or {}
                if event.get("id") and detail.get("total"):
                    totals[event["id"]] = (int(detail.get("current", 0)), int(detail["total"]))
                    done = sum(c for c, _ in totals.values())
                    whole = sum(t for _, t in totals.values())
                    percent = min(99, done * 100 // max(whole, 1))
                    if percent >= last + 5:
                        last = percent
                        progress(percent)
        except docker.errors.APIError as exc:
            raise LaunchError(f"pulling {image} failed: {exc.explanation or exc}") from exc
        progress(100)

    def _create(self, start: StartInstance, role: str,
                netns: PodContainer | None) -> PodContainer:
        name = container_name(start.instance_id, role)
        common: dict[str, Any] = {"name": name, "labels": self.labels(start.instance_id, role),
                                  "detach": True, "privileged": False}
        if role == pod.ROLE_NETNS:
            spec = {**common, "image": self.settings.helpers_image,
                    "command": ["sleep", "infinity"], "init": True,
                    "network": self.settings.network,
                    "hostname": start.instance_id,
                    "extra_hosts": {"host.docker.internal": self.pods_gateway()},
                    "mem_limit": "32m", "pids_limit": 16, "cap_drop": ["ALL"],
                    "security_opt": ["no-new-privileges"]}
        else:
            assert netns is not None
            common["network_mode"] = f"container:{netns.id}"
            if role == pod.ROLE_TOOL:
                spec = {**common, "image": start.image, "environment": dict(start.env),
                        "nano_cpus": int(start.cpu * 1e9), "mem_limit": f"{start.memory_mb}m",
                        "pids_limit": start.pids_limit, **TOOL_PRIVILEGES}
                if start.storage is not None:
                    spec["mounts"] = storage.tool_mounts(self._storage_path(start.instance_id))
            else:
                spec = {**common, "image": self.settings.helpers_image,
                        "command": list(self.settings.helper_commands[role]),
                        "environment": helper_env(start, role), "init": True,
                        "cap_drop": ["ALL"], "security_opt": ["no-new-privileges"],
                        **HELPER_LIMITS}
                if role == pod.ROLE_LISTENER:
                    spec["tmpfs"] = LISTENER_TMPFS
                if role == pod.ROLE_STORAGE:
                    spec.update(storage.PRIVILEGES)
                    spec["mounts"] = storage.helper_mounts(self._storage_path(start.instance_id))
        try:
            made = self._client.containers.create(**spec)
            return PodContainer(made.id, name, role, "created")
        except docker.errors.APIError as exc:
            if exc.status_code == 409:  # made by an earlier, interrupted attempt
                found = self.containers(start.instance_id).get(role)
                if found is not None:
                    return found
            raise LaunchError(f"cannot create the {role} container: "
                              f"{exc.explanation or exc}") from exc

    def _storage_path(self, instance_id: str) -> str:
        """The pod's storage volume (made if missing), by its path on the engine's host."""
        name = container_name(instance_id, "storage")
        try:
            self._client.volumes.get(name)
        except docker.errors.NotFound:
            self._client.volumes.create(name, labels=self.labels(instance_id, pod.ROLE_STORAGE))
        return storage.volume_path(self._client, name)

    def _start(self, container: PodContainer, role: str) -> None:
        try:
            self._client.api.start(container.id)
        except docker.errors.APIError as exc:
            raise LaunchError(f"cannot start the {role} container: "
                              f"{exc.explanation or exc}") from exc

    def create(self, start: StartInstance, timeout: float = 300.0) -> None:
        """Create and start every container of the pod, reusing what exists."""
        for future in self._bring_up(start, timeout):
            future.result()

    def _bring_up(self, start: StartInstance, timeout: float,
                  pulled: Future[None] | None = None) -> list[Future[None]]:
        """Start the namespace holder; return futures that start the rest.

        The joined containers are created while the holder starts, and started in parallel
        (a launch is mostly engine round trips; overlapping them is most of its speed), except
        that a tool with storage waits for the storage helper's mount (within ``timeout`` of
        the tool's creation). ``pulled``: the pull of the tool's image, still under way: the
        holder and the helpers come up meanwhile, the tool once it is done.
        """
        existing = self.containers(start.instance_id)
        netns = existing.get(pod.ROLE_NETNS) or self._create(start, pod.ROLE_NETNS, None)
        joined = [role for role in roles_for(start) if role != pod.ROLE_NETNS]

        def make(role: str) -> PodContainer:
            if role == pod.ROLE_TOOL and pulled is not None:
                pulled.result()  # another pool: never waits on a task queued behind it
            return existing.get(role) or self._create(start, role, netns)

        made = {role: self._pool.submit(make, role) for role in joined}
        restart_joined = False
        if netns.status != "running":
            # Containers that joined a previous run of this namespace lost it with it.
            restart_joined = pod.ROLE_NETNS in existing
            self._start(netns, pod.ROLE_NETNS)

        def bring_up(role: str) -> None:
            # Waits only on tasks submitted before it, so the FIFO pool cannot deadlock.
            container = made[role].result()
            if role == pod.ROLE_TOOL and start.storage is not None:
                self._await_storage(start, time.monotonic() + timeout)
            if container.status == "running" and restart_joined:
                self._client.api.restart(container.id, timeout=5)
            elif container.status != "running":
                self._start(container, role)

        return [self._pool.submit(bring_up, role) for role in joined]

    def check(self, start: StartInstance, *, launching: bool = False) -> str | None:
        """None if every container of the pod runs; else why not (user-facing). Once the pod
        was launched, the storage helper is not needed for that: the storage keeper starts it
        again, and its troubles are reported on the instance without stopping the tool."""
        existing = self.containers(start.instance_id)
        for role in roles_for(start):
            if role == pod.ROLE_STORAGE and not launching:
                continue
            container = existing.get(role)
            if container is None:
                return f"the {role} container is missing"
            if container.status != "running":
                return self._exit_reason(container)
        return None

    def storage_helper(self, instance_id: str) -> tuple[str, str] | None:
        """(container id, when it last started) of the pod's storage helper while it runs."""
        helper = self.containers(instance_id).get(pod.ROLE_STORAGE)
        if helper is None or helper.status != "running":
            return None
        try:
            state = self._client.api.inspect_container(helper.id).get("State", {})
        except docker.errors.NotFound:
            return None
        return helper.id, str(state.get("StartedAt", ""))

    def restart_storage(self, instance_id: str) -> str | None:
        """Start the pod's storage helper again if it stopped; why it stopped (None: it was
        running, or the pod has none)."""
        helper = self.containers(instance_id).get(pod.ROLE_STORAGE)
        if helper is None or helper.status in ("running", "created", "restarting"):
            return None
        reason = self._exit_reason(helper)
        self._start(helper, pod.ROLE_STORAGE)
        return reason

    def _exit_reason(self, container: PodContainer) -> str:
        role = container.role
        if container.status == "created":
            return f"the {role} container was created but never started"
        try:
            state = self._client.api.inspect_container(container.id).get("State", {})
            tail = self._client.api.logs(container.id, tail=3).decode(errors="replace").strip()
        except docker.errors.NotFound:
            return f"the {role} container is missing"
        what = "tool" if role == pod.ROLE_TOOL else f"{role} helper"
        reason = f"the {what} exited with code {state.get('ExitCode', '?')}"
        if state.get("OOMKilled"):
            reason += " (out of memory)"
        return f"{reason}: {tail[-300:]}" if tail else reason

    def wait_ready(self, start: StartInstance, timeout: float,
                   starting: Sequence[Future[None]] = ()) -> None:
        """Return once every container runs and the tool and the auth helper answer HTTP inside
        the pod's namespace. ``starting``: container starts still under way (probing overlaps
        them); their errors are raised here."""
        deadline = time.monotonic() + timeout
        netns_id = self.containers(start.instance_id)[pod.ROLE_NETNS].id
        while True:
            if all(f.done() for f in starting):
                for future in starting:
                    future.result()
                reason = self.check(start, launching=True)
                if reason is not None:
                    raise LaunchError(reason)
            slice_ = max(0.1, min(PROBE_SLICE, deadline - time.monotonic()))
            if self._probe(netns_id, (start.port, pod.AUTH_PORT), slice_):
                for future in starting:
                    future.result()
                reason = self.check(start, launching=True)
                if reason is not None:
                    raise LaunchError(reason)
                return
            if time.monotonic() >= deadline:
                raise LaunchError(f"the tool (port {start.port}) or its auth helper did not "
                                  f"answer within {timeout:.0f} s")

    def _await_storage(self, start: StartInstance, deadline: float) -> None:
        """Return once the storage helper made its ready file (the user's storage is mounted);
        LaunchError with its reason if it stopped (the store refused the credentials, ...) or
        ``deadline`` passed."""
        while True:
            helper = self.containers(start.instance_id).get(pod.ROLE_STORAGE)
            if helper is None:
                raise LaunchError("the storage container is missing")
            slice_ = max(0.1, min(PROBE_SLICE, deadline - time.monotonic()))
            if helper.status == "running" and self._exec_ok(
                    helper.id, ["python3", "-c", _WAIT_FILE, pod.STORAGE_READY_FILE,
                                f"{slice_:.2f}"]):
                return
            helper = self.containers(start.instance_id).get(pod.ROLE_STORAGE) or helper
            if helper.status not in ("running", "created"):
                raise LaunchError(f"storage failed: {self._exit_reason(helper)}")
            if time.monotonic() >= deadline:
                raise LaunchError("the storage helper did not mount the user's storage in time")
            if helper.status == "created":
                time.sleep(PROBE_INTERVAL)

    def _probe(self, netns_id: str, ports: Sequence[int], seconds: float) -> bool:
        """True if every port answered HTTP within ``seconds``; False also if the holder
        stopped (the caller's check() then says why)."""
        return self._exec_ok(netns_id, ["python3", "-c", _PROBE, ",".join(map(str, ports)),
                                        f"{seconds:.2f}"])

    def _exec_ok(self, container_id: str, argv: list[str]) -> bool:
        """True if ``argv`` exited 0 in the container; False also if it is not running."""
        api = self._client.api
        try:
            run = api.exec_create(container_id, argv)
            api.exec_start(run["Id"])
            return bool(api.exec_inspect(run["Id"])["ExitCode"] == 0)
        except docker.errors.APIError as exc:
            if exc.status_code in (404, 409):
                time.sleep(PROBE_INTERVAL)
                return False
            raise

    def hand_tunnel_token(self, instance_id: str, token: str) -> None:
        """Give the pod's listener a renewed tunnel token (it sends it over its tunnels);
        PodError if the listener is not running or did not take it."""
        listener = self.containers(instance_id).get(pod.ROLE_LISTENER)
        if listener is None or listener.status != "running":
            raise PodError(f"instance {instance_id} has no running listener")
        argv = [*self.settings.helper_commands[pod.ROLE_LISTENER], "renew"]
        api = self._client.api
        try:
            run = api.exec_create(listener.id, argv, environment={
                pod.ENV_TUNNEL_TOKEN: token, pod.ENV_TUNNEL_TOKEN_FILE: pod.TUNNEL_TOKEN_FILE})
            output = api.exec_start(run["Id"])
            code = api.exec_inspect(run["Id"])["ExitCode"]
        except docker.errors.APIError as exc:
            raise PodError(f"cannot hand {instance_id}'s listener its token: "
                           f"{exc.explanation or exc}") from exc
        if code != 0:
            raise PodError(f"{instance_id}'s listener refused its token: "
                           f"{output.decode(errors='replace').strip()[-300:]}")

    def check_helpers(self, start: StartInstance) -> None:
        """Raise :class:`LaunchError` at once if the helpers image lacks the module of a helper
        this pod runs (a start with storage before ``helpers.storage`` exists), rather than
        letting the helper exit after the pod was made. Only helpers run as ``python3 -m
        <module>`` are checked (a site's own command is its own), once per image id."""
        modules = {}
        for role in roles_for(start):
            argv = list(self.settings.helper_commands.get(role, ()))
            if len(argv) == 3 and argv[:2] == ["python3", "-m"]:
                modules[role] = argv[2]
        if not modules:
            return
        image = self.settings.helpers_image
        try:
            image_id = self._client.images.get(image).id
        except docker.errors.ImageNotFound:
            raise LaunchError(f"the helpers image {image} is not on this node") from None
        known = self._modules.setdefault(image_id, {})
        unknown = sorted(set(modules.values()) - set(known))
        if unknown:
            try:
                missing = missing_modules(self._client, image, unknown, self.settings.labels)
            except docker.errors.ContainerError as exc:
                raise LaunchError(f"cannot look into the helpers image {image}: "
                                  f"{exc.stderr!r}") from exc
            known.update({module: module not in missing for module in unknown})
        absent = [f"{role} helper ({module})" for role, module in modules.items()
                  if not known[module]]
        if absent:
            raise LaunchError(f"the helpers image {image} has no {' and no '.join(absent)}")

    def launch(self, start: StartInstance, timeout: float,
               progress: Callable[[int], None]) -> None:
        """Pull the tool's image while the holder and the helpers start (a derived launch of
        a saved image is mostly its pull); ``timeout`` counts from the pull's end."""
        self.check_helpers(start)
        pulled = self._pulls.submit(self.ensure_image, start.image, start.registry, progress)
        starting = self._bring_up(start, timeout, pulled)
        try:
            try:
                pulled.result()  # a failed pull says so, before any readiness wait
            except LaunchError:
                for future in starting:
                    future.exception()
                self.remove(start.instance_id)  # as if never begun: no image, no pod
                raise
            self.wait_ready(start, timeout, starting)
        finally:
            for future in starting:  # never leave a start running behind a failure
                future.exception()

    # -- lifecycle -----------------------------------------------------------------------

    def stop(self, instance_id: str, grace: float) -> None:
        """Stop the pod: SIGTERM, ``grace`` seconds, then SIGKILL; the tool first (so that it
        can still write its files), the storage helper with at least its own grace (it stores
        what changed), the holder last. The upload helper is not part of it: a save resumed
        after a restart stops the pod again while its push goes on."""
        existing = self.containers(instance_id)
        existing.pop(pod.ROLE_UPLOAD, None)
        netns = existing.pop(pod.ROLE_NETNS, None)
        tool = existing.pop(pod.ROLE_TOOL, None)

        def stop_one(container: PodContainer) -> None:
            seconds = grace
            if container.role == pod.ROLE_STORAGE:
                seconds = max(grace, storage.STOP_SECONDS)
            with contextlib.suppress(docker.errors.NotFound):
                self._client.api.stop(container.id, timeout=int(seconds))

        if tool is not None:
            stop_one(tool)
        for future in [self._pool.submit(stop_one, c) for c in existing.values()]:
            future.result()
        if netns is not None:
            stop_one(netns)

    def commit(self, instance_id: str, image: str) -> str:
        """Commit the tool container as ``image``; return the new image id."""
        tool = self.containers(instance_id).get(pod.ROLE_TOOL)
        if tool is None:
            raise PodError(f"instance {instance_id} has no tool container to save")
        repository, tag = parse_repository_tag(image)
        labels = {**self.settings.labels, pod.LABEL_INSTANCE: instance_id}
        changes = [f"LABEL {k}={json.dumps(v)}" for k, v in labels.items()]
        try:
            committed = self._client.api.commit(
                tool.id, repository=repository, tag=tag or "latest",
                message=f"dit4c: saved instance {instance_id}", changes=changes)
        except docker.errors.APIError as exc:
            raise PodError(f"saving {instance_id} as {image} failed: "
                           f"{exc.explanation or exc}") from exc
        return str(committed["Id"])

    def has_image(self, image: str) -> bool:
        try:
            self._client.images.get(image)
        except docker.errors.ImageNotFound:
            return False
        return True

    def forget_image(self, reference: str) -> None:
        """Drop ``reference`` (a commit's name); the image goes with its last name, unless a
        container still uses it. Gone already is success."""
        with contextlib.suppress(docker.errors.NotFound):
            try:
                self._client.images.remove(reference)
            except docker.errors.APIError as exc:
                if exc.status_code != 409:  # in use by a container: it stays for that one
                    raise

    def remove(self, instance_id: str) -> None:
        """Remove every container, volume and network of the pod."""
        filters = self._filters(instance_id)

        def remove_one(container: PodContainer) -> None:
            try:
                self._client.api.remove_container(container.id, force=True, v=True)
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as exc:
                if exc.status_code != 409:  # 409: removal already in progress
                    raise

        existing = self.containers(instance_id)
        helper = existing.get(pod.ROLE_STORAGE)
        if helper is not None and helper.status in ("running", "restarting"):
            self.stop(instance_id, 0)  # the storage helper stores what changed and unmounts
        for future in [self._pool.submit(remove_one, c) for c in existing.values()]:
            future.result()
        for volume in self._client.volumes.list(filters=filters):
            try:
                volume.remove(force=True)
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError:
                # A storage helper that was killed left its mount in the volume.
                storage.detach(self._client, self.settings.helpers_image,
                               storage.volume_path(self._client, volume.name),
                               self.settings.labels)
                volume.remove(force=True)
        for network in self._client.networks.list(filters=filters):
            with contextlib.suppress(docker.errors.NotFound):
                network.remove()
