"""The storage helper's container, as the node daemon makes and tends it.

The user's storage is a FUSE mount made by the storage helper (``python3 -m helpers.storage``,
docs/helpers.md) inside the pod's storage volume, which both containers bind at
``protocol.pod.STORAGE_VOLUME_MOUNT`` (``/mnt``) by its path on the engine's host. The helper
and its volume are the pod sandbox's (:mod:`node_daemon.sandboxes`): made ahead, mounted and
imported, bound to the instance's storage at launch over a Docker attach
(:func:`settings_env` is the bind's one setting), so the credentials are in no container's
configuration. The containers:

- the helper with ``bind-propagation=rshared``, root with ``SYS_ADMIN`` (to mount), ``SETUID``
  and ``SETGID`` (to hand the mount to its unprivileged file server), ``/dev/fuse``,
  ``no-new-privileges``; AppArmor's ``docker-default`` profile forbids ``mount``, so the helper
  is not under it (where AppArmor is on). If it stops at launch, the launch fails with its
  reason; if it stops later, :mod:`node_daemon.storage_keeper` says so on the instance and
  starts it again (a new run first detaches the dead mount the old one left);
- the tool with ``bind-propagation=rslave`` and no privilege at all: the mount shows up at
  ``/mnt/storage`` in it, and so does a new one after the helper restarted. The tool is started
  only once the helper said ``ready``, so it never writes under the mount.

The credentials are only in the helper's memory and its private tmpfs; renewed ones reach it by
a bind of the same storage (the storage keeper). A helper made by an earlier release has them
in its environment (``ENV_STORAGE``, no standard input): :func:`renew` (an exec as the
helper's unprivileged user) writes them to its session file.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Mapping
from typing import Any

import docker
import docker.errors
from docker.types import Mount

from protocol import pod
from protocol.messages import StorageAccess

log = logging.getLogger("dit4c.node.storage")

PRIVILEGES: Mapping[str, Any] = {
    "user": "0",
    "cap_add": ["SYS_ADMIN", "SETUID", "SETGID"],
    "devices": ["/dev/fuse:/dev/fuse:rwm"],
    "security_opt": ["no-new-privileges", "apparmor=unconfined"],
    # The helper's run dir: the ready, status and session files. Owned by the file server's
    # user, group root (the privileged part writes the ready file), nobody else.
    "tmpfs": {pod.STORAGE_RUN_DIR: f"uid={pod.STORAGE_UID},gid=0,mode=0770,size=64k"},
}
STOP_SECONDS = 10
"""The helper's stop grace: it stores every changed file before it exits."""


def settings_env(access: StorageAccess) -> dict[str, str]:
    """The helper's one setting (``protocol.pod.ENV_STORAGE``), as its bind carries it."""
    return {pod.ENV_STORAGE: json.dumps({
        "kind": access.kind, "bucket": access.bucket, "prefix": access.prefix,
        "credentials": access.credentials, "endpoint_url": access.endpoint_url,
        "region": access.region, "quota_bytes": access.quota_bytes})}


def volume_path(client: docker.DockerClient, volume: str) -> str:
    """Where the engine keeps ``volume``'s files on its host (what both containers bind)."""
    return str(client.api.inspect_volume(volume)["Mountpoint"])


def helper_mounts(path: str) -> list[Mount]:
    return [Mount(pod.STORAGE_VOLUME_MOUNT, path, type="bind", propagation="rshared")]


def tool_mounts(path: str) -> list[Mount]:
    return [Mount(pod.STORAGE_VOLUME_MOUNT, path, type="bind", propagation="rslave")]


def _exec(client: docker.DockerClient, container_id: str, argv: list[str], *,
          user: str = "", environment: dict[str, str] | None = None) -> tuple[int, bytes]:
    api = client.api
    run = api.exec_create(container_id, argv, user=user, environment=environment or {})
    output = api.exec_start(run["Id"])
    return int(api.exec_inspect(run["Id"])["ExitCode"]), output


def renew(client: docker.DockerClient, container_id: str, access: StorageAccess) -> None:
    """Hand renewed credentials (and the current quota) to the running helper. Raises
    ``docker.errors.APIError`` or RuntimeError if it could not take them."""
    session = json.dumps({"credentials": access.credentials, "quota_bytes": access.quota_bytes})
    code, output = _exec(client, container_id, ["python3", "-m", "helpers.storage", "renew"],
                         user=str(pod.STORAGE_UID),
                         environment={pod.ENV_STORAGE_SESSION: session})
    if code != 0:
        raise RuntimeError(f"the storage helper refused the renewal: "
                           f"{output.decode(errors='replace').strip()[-300:]}")


def status(client: docker.DockerClient, container_id: str) -> dict[str, Any] | None:
    """The helper's status file (``protocol.pod.STORAGE_STATUS_FILE``), None if unreadable."""
    try:
        code, output = _exec(client, container_id, ["cat", pod.STORAGE_STATUS_FILE],
                             user=str(pod.STORAGE_UID))
    except docker.errors.APIError:
        return None
    if code != 0:
        return None
    try:
        found = json.loads(output)
    except ValueError:
        return None
    return found if isinstance(found, dict) else None


def remove_volume(client: docker.DockerClient, name: str, image: str,
                  labels: Mapping[str, str]) -> None:
    """Remove the storage volume ``name``; gone already is success. One that still holds the
    mount of a helper that was killed is detached first (:func:`detach`)."""
    try:
        client.api.remove_volume(name, force=True)
    except docker.errors.NotFound:
        return
    except docker.errors.APIError:
        detach(client, image, volume_path(client, name), labels)
        with contextlib.suppress(docker.errors.NotFound):
            client.api.remove_volume(name, force=True)


def detach(client: docker.DockerClient, image: str, path: str,
           labels: Mapping[str, str]) -> None:
    """Detach a mount that a killed helper left in the volume at ``path`` (so that the volume
    can be removed): a throwaway helper container runs ``helpers.storage unmount``."""
    client.containers.run(
        image, ["python3", "-m", "helpers.storage", "unmount"], remove=True,
        network_mode="none", user="0", cap_drop=["ALL"], cap_add=["SYS_ADMIN"],
        security_opt=["no-new-privileges", "apparmor=unconfined"],
        mounts=helper_mounts(path), labels=dict(labels))

