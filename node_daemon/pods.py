"""Pods over the Docker API.

A pod is one instance's containers sharing one network namespace. Its namespace holder and
listener are a *sandbox* (:mod:`node_daemon.sandboxes`): made ahead of time in a pool, or by the
launch itself when none is free, claimed for the instance (the holder renamed
``dit4c-<instance>-netns``) and bound to it at launch; they carry ``dit4c.sandbox`` and no
``dit4c.instance``. The instance's own containers carry ``dit4c.node``, ``dit4c.instance``,
``dit4c.role`` and ``dit4c.sandbox`` (plus the configured extra labels):

- ``netns`` (sandbox) — owns the namespace: the helpers image running ``sleep infinity`` under
  Docker's init, on the pods network with ``host.docker.internal`` mapped to that bridge's
  gateway. A dedicated holder (rather than the listener) means a helper that crashes or is
  restarted never takes the pod's network away from the tool.
- ``listener`` helper (sandbox; ``python3 -m helpers.listener``), given the tunnel's and the
  auth helper's settings from :mod:`protocol.pod` by the bind (:mod:`protocol.sandbox`, over a
  Docker attach: in no container's configuration): it holds the tunnels and runs the auth
  helper in its own process (every stream goes to the auth gate in-process, one loopback hop
  fewer; the gate also listens on ``AUTH_PORT``), and tells the node when the tool answers;
  unprivileged, all capabilities dropped;
- ``storage`` helper (sandbox) when the start asks for storage: the user's storage mounted
  (FUSE) inside the sandbox's storage volume, which the tool binds too (privileges, mounts and
  the rest: :mod:`node_daemon.storage`), bound to the instance's storage over an attach as
  the listener is; the tool starts once it says the storage is ready;
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
from concurrent.futures import TimeoutError as FutureTimeout
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
from node_daemon.sandboxes import (
    LABEL_SANDBOX,
    Binding,
    BindRefused,
    Sandbox,
    SandboxPool,
    claimant,
)
from protocol import pod
from protocol.messages import RegistryAccess, StartInstance, StorageAccess

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

PROBE_SLICE = 1.0
"""Seconds one wait for the listener's ``ready`` lasts before the daemon looks at the
containers again."""
REBIND_SECONDS = 30.0
"""How long the storage keeper waits for a helper to take a bind (a restarted one reads it once
its file server's imports are done)."""


@dataclass(frozen=True)
class PodContainer:
    id: str
    name: str
    role: str
    status: str
    """Docker's state: created, running, exited, ..."""
    sandbox: str | None = None
    """The sandbox it belongs to or joined (None: a pod made before sandboxes)."""


def _row(row: dict[str, Any]) -> PodContainer:
    names = row.get("Names") or ["?"]
    labels = row["Labels"]
    return PodContainer(row["Id"], names[0].lstrip("/"), labels.get(pod.LABEL_ROLE, "?"),
                        row.get("State", "?"), labels.get(LABEL_SANDBOX))


@dataclass(frozen=True)
class PodSettings:
    node_id: str
    network: str = pod.PODS_NETWORK
    helpers_image: str = "dit4c/helpers:dev"
    labels: Mapping[str, str] = field(default_factory=dict)
    helper_commands: Mapping[str, Sequence[str]] = field(
        default_factory=lambda: dict(DEFAULT_HELPER_COMMANDS))
    sandboxes: int = 0
    """Free pod sandboxes to keep ready (0: each launch makes its own)."""
    sandbox_storage: bool = True
    """Free sandboxes have a storage helper ready (False: a launch with storage adds one)."""


@dataclass(frozen=True)
class StorageHelper:
    """A pod's running storage helper, as the storage keeper sees it."""

    id: str
    started_at: str
    """When it last started (a restart changes it)."""
    binds: bool
    """It takes its settings by a bind (a sandbox's); False: from its environment (a helper
    made by an earlier release), renewed by :func:`node_daemon.storage.renew`."""


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
        self.sandboxes = SandboxPool(
            client, node_id=settings.node_id, network=settings.network,
            helpers_image=settings.helpers_image,
            listener_command=settings.helper_commands[pod.ROLE_LISTENER],
            labels=settings.labels, size=settings.sandboxes,
            listener_options={"tmpfs": dict(LISTENER_TMPFS)},
            storage_command=(settings.helper_commands[pod.ROLE_STORAGE]
                             if settings.sandbox_storage else None))

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
        """The pod's containers by role (any status), its sandbox's included, from one listing
        call (never racing a concurrent removal the way a list-then-inspect does)."""
        rows = self._client.api.containers(all=True, filters=self._filters())
        mine = [_row(r) for r in rows if r["Labels"].get(pod.LABEL_INSTANCE) == instance_id]
        sandboxes = {c.sandbox for c in mine if c.sandbox is not None}
        sandboxes.update(r["Labels"][LABEL_SANDBOX] for r in rows
                         if claimant(r) == instance_id)
        found = {c.role: c for c in mine}
        for row in rows:
            labels = row["Labels"]
            if pod.LABEL_INSTANCE not in labels and labels.get(LABEL_SANDBOX) in sandboxes:
                found.setdefault(labels.get(pod.LABEL_ROLE, "?"), _row(row))
        return found

    def instances(self) -> dict[str, list[str]]:
        """Every instance id that has a container, volume or claimed sandbox of this node: what
        it has."""
        found: dict[str, list[str]] = {}
        filters = self._filters()
        for row in self._client.api.containers(all=True, filters=filters):
            instance_id = row["Labels"].get(pod.LABEL_INSTANCE) or claimant(row) or ""
            found.setdefault(instance_id, []).append("container")
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

    def _create_tool(self, start: StartInstance, sandbox: Sandbox) -> PodContainer:
        """The tool's container, joined to ``sandbox`` (binding its storage volume)."""
        role = pod.ROLE_TOOL
        name = container_name(start.instance_id, role)
        spec: dict[str, Any] = {
            "name": name, "labels": {**self.labels(start.instance_id, role),
                                     LABEL_SANDBOX: sandbox.id},
            "detach": True, "privileged": False, "network_mode": f"container:{sandbox.netns}",
            "image": start.image, "environment": dict(start.env),
            "nano_cpus": int(start.cpu * 1e9), "mem_limit": f"{start.memory_mb}m",
            "pids_limit": start.pids_limit, **TOOL_PRIVILEGES}
        if start.storage is not None:
            spec["mounts"] = storage.tool_mounts(
                self.sandboxes.storage_path(sandbox.id, start.instance_id))
        try:
            made = self._client.containers.create(**spec)
            return PodContainer(made.id, name, role, "created", sandbox.id)
        except docker.errors.APIError as exc:
            if exc.status_code == 409:  # made by an earlier, interrupted attempt
                found = self.containers(start.instance_id).get(role)
                if found is not None and found.sandbox == sandbox.id:
                    return found
            raise LaunchError(f"cannot create the {role} container: "
                              f"{exc.explanation or exc}") from exc

    def _start(self, container_id: str, role: str) -> None:
        try:
            self._client.api.start(container_id)
        except docker.errors.APIError as exc:
            raise LaunchError(f"cannot start the {role} container: "
                              f"{exc.explanation or exc}") from exc

    def _bring_up(self, start: StartInstance, timeout: float,
                  pulled: Future[None] | None = None
                  ) -> tuple[Future[Binding], list[Future[None]]]:
        """Claim the pod's sandbox (started if it was stopped); return a future of its bound
        listener and futures that bind its storage helper and make and start the tool.

        The binds and the tool's create and start run in parallel (a launch is mostly engine
        round trips, the listener's dial and the storage's checks; overlapping them is most of
        its speed), except that a tool with storage starts once the storage helper said its
        mount is ready (within ``timeout``). ``pulled``: the pull of the tool's image, still
        under way: the sandbox is bound meanwhile, the tool made once it is done.
        """
        existing = self.containers(start.instance_id)
        sandbox = self.sandboxes.acquire(start.instance_id,
                                         with_storage=start.storage is not None)
        # Parts of a pod made before sandboxes, joined to a sandbox since replaced, or a
        # storage container of the pod's own (before sandboxes had them: it takes no bind).
        stale = [c.id for c in existing.values() if c.role != pod.ROLE_UPLOAD and (
            c.sandbox != sandbox.id
            or c.name == container_name(start.instance_id, pod.ROLE_STORAGE))]
        self.sandboxes.remove_containers(stale)
        if start.storage is None and sandbox.storage is not None:
            self._pool.submit(self._drop_storage, sandbox.id)  # off the launch's path

        def make_tool() -> PodContainer:
            if pulled is not None:
                pulled.result()  # another pool: never waits on a task queued behind it
            found = existing.get(pod.ROLE_TOOL)
            if found is not None and found.sandbox == sandbox.id:
                return found
            return self._create_tool(start, sandbox)

        tool = self._pool.submit(make_tool)
        # Containers that joined a previous run of the namespace lost it with it.
        restart_joined = sandbox.statuses[pod.ROLE_NETNS] != "running"
        if restart_joined:
            self._start(sandbox.netns, pod.ROLE_NETNS)

        def start_joined(container_id: str, status: str, role: str) -> None:
            if status == "running" and restart_joined:
                self._client.api.restart(container_id, timeout=5)
            elif status != "running":
                self._start(container_id, role)

        def bind() -> Binding:
            start_joined(sandbox.listener, sandbox.statuses[pod.ROLE_LISTENER],
                         pod.ROLE_LISTENER)
            binding = Binding(self._client, sandbox.listener)
            try:
                binding.bind(helper_env(start, pod.ROLE_LISTENER), timeout)
            except BaseException:
                binding.close()
                raise
            return binding

        def bind_storage(access: StorageAccess) -> None:
            helper = sandbox.storage
            if helper is None:
                helper = self.sandboxes.add_storage(sandbox, start.instance_id)
            else:
                start_joined(helper, sandbox.statuses[pod.ROLE_STORAGE], pod.ROLE_STORAGE)
            self._bind_storage(helper, access, timeout, ready=True)

        def bring_up_tool(storage_ready: Future[None] | None) -> None:
            # Waits only on tasks submitted before it, so the FIFO pool cannot deadlock.
            container = tool.result()
            if storage_ready is not None:
                storage_ready.result()
            start_joined(container.id, container.status, pod.ROLE_TOOL)

        binding = self._pool.submit(bind)
        starting: list[Future[None]] = []
        if start.storage is not None:
            starting.append(self._pool.submit(bind_storage, start.storage))
        starting.append(self._pool.submit(bring_up_tool, starting[0] if starting else None))
        return binding, starting

    def _drop_storage(self, sandbox_id: str) -> None:
        """Remove a claimed sandbox's storage helper that its instance does not use."""
        try:
            self.sandboxes.remove_storage(sandbox_id)
        except docker.errors.DockerException as exc:  # left for the pod's removal
            log.warning("cannot remove the unused storage helper of sandbox %s: %s",
                        sandbox_id, exc)

    def _bind_storage(self, container_id: str, access: StorageAccess, timeout: float, *,
                      ready: bool) -> None:
        """Bind the storage helper ``container_id`` to ``access`` (a first bind, or the same
        storage's renewal); with ``ready``, return once it says its mount serves. LaunchError
        ``storage failed: <why>`` if the store refused or the helper exited."""
        binding = Binding(self._client, container_id, "the storage helper")
        try:
            binding.bind(storage.settings_env(access), timeout)
            if ready and not binding.wait_ready(timeout):
                raise LaunchError("the storage helper did not mount the user's storage in time")
        except BindRefused as exc:
            raise LaunchError(f"storage failed: {exc.reason}") from None
        except LaunchError:
            stopped = self._stopped(container_id, pod.ROLE_STORAGE)
            if stopped is not None:  # its code and last lines say why
                raise LaunchError(f"storage failed: {stopped}") from None
            raise
        finally:
            binding.close()

    def _stopped(self, container_id: str, role: str) -> str | None:
        """Why the container is not running; None if it is."""
        try:
            status = self._client.api.inspect_container(container_id)["State"]["Status"]
        except docker.errors.NotFound:
            return f"the {role} container is missing"
        if status in ("running", "restarting"):
            return None
        return self._exit_reason(PodContainer(container_id, "", role, status))

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

    def storage_helper(self, instance_id: str) -> StorageHelper | None:
        """The pod's storage helper while it runs."""
        helper = self.containers(instance_id).get(pod.ROLE_STORAGE)
        if helper is None or helper.status != "running":
            return None
        try:
            found = self._client.api.inspect_container(helper.id)
        except docker.errors.NotFound:
            return None
        return StorageHelper(helper.id, str(found.get("State", {}).get("StartedAt", "")),
                             bool(found.get("Config", {}).get("OpenStdin")))

    def bind_storage(self, helper: StorageHelper, access: StorageAccess) -> None:
        """Bind a running storage helper to the instance's storage (one restarted comes up
        without it) or hand it renewed credentials and quota (the same bind again); returns
        once it took them. LaunchError (a PodError) if it did not."""
        self._bind_storage(helper.id, access, REBIND_SECONDS, ready=False)

    def restart_storage(self, instance_id: str) -> str | None:
        """Start the pod's storage helper again if it stopped; why it stopped (None: it was
        running, or the pod has none)."""
        helper = self.containers(instance_id).get(pod.ROLE_STORAGE)
        if helper is None or helper.status in ("running", "created", "restarting"):
            return None
        reason = self._exit_reason(helper)
        self._start(helper.id, pod.ROLE_STORAGE)
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

    def wait_ready(self, start: StartInstance, timeout: float, binding: Future[Binding],
                   starting: Sequence[Future[None]] = ()) -> None:
        """Return once every container runs, the listener took its settings (its auth gate
        listens) and says the tool answers HTTP (pushed over the bind's attach: no probe runs
        in the pod). ``starting``: container starts still under way; their errors are raised
        here."""
        deadline = time.monotonic() + timeout

        def remaining() -> float:
            return max(0.0, deadline - time.monotonic())

        def check() -> None:
            for future in starting:
                future.result()
            reason = self.check(start, launching=True)
            if reason is not None:
                raise LaunchError(reason)

        try:
            listener = binding.result(timeout=remaining())
        except FutureTimeout:
            raise LaunchError("the listener did not take its settings in time") from None
        while True:
            if all(f.done() for f in starting):
                check()
            try:
                ready = listener.wait_ready(max(0.1, min(PROBE_SLICE, remaining())))
            except LaunchError:
                # A container that exited says why (its code, its last lines).
                reason = self.check(start, launching=True)
                if reason is not None:
                    raise LaunchError(reason) from None
                raise
            if ready:
                check()
                return
            if time.monotonic() >= deadline:
                raise LaunchError(f"the tool (port {start.port}) did not answer within "
                                  f"{timeout:.0f} s")

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
        """Pull the tool's image while the sandbox is bound and the helpers start (a derived
        launch of a saved image is mostly its pull); ``timeout`` counts from the pull's end."""
        self.check_helpers(start)
        with self.sandboxes.launching():
            pulled = self._pulls.submit(self.ensure_image, start.image, start.registry,
                                        progress)
            binding, starting = self._bring_up(start, timeout, pulled)
            futures: list[Future[Any]] = [binding, *starting]
            try:
                try:
                    pulled.result()  # a failed pull says so, before any readiness wait
                except LaunchError:
                    for future in futures:
                        future.exception()
                    self.remove(start.instance_id)  # as if never begun: no image, no pod
                    raise
                self.wait_ready(start, timeout, binding, starting)
            finally:
                for future in futures:  # never leave a start running behind a failure
                    future.exception()
                if not binding.cancelled() and binding.exception() is None:
                    binding.result().close()

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
        # The pod's own volumes (an earlier release's storage volume), then its sandbox's
        # (labelled with the sandbox only when it was made free).
        for volume in self._client.volumes.list(filters=filters):
            storage.remove_volume(self._client, volume.name, self.settings.helpers_image,
                                  self.settings.labels)
        for sandbox_id in {c.sandbox for c in existing.values() if c.sandbox is not None}:
            self.sandboxes.remove_volumes(sandbox_id)
        for network in self._client.networks.list(filters=filters):
            with contextlib.suppress(docker.errors.NotFound):
                network.remove()
