"""Saving a pod's tool container to the image server, through the upload helper.

After the pod has stopped and its tool container was committed (``PodRunner.commit``):

1. an **upload container** ``dit4c-<instance>-upload`` is created (role ``upload``): the helpers
   image running ``python3 -m helpers.upload`` with only its own settings (``DIT4C_UPLOAD``: the
   push token is in no other container), unprivileged, all capabilities dropped, on the pods
   network with ``host.docker.internal`` mapped to its gateway, and a volume
   ``dit4c-<instance>-upload`` at :data:`protocol.pod.UPLOAD_DIR`;
2. the committed image is **exported** into that volume while the container is not yet started
   (``docker save`` streamed into ``PUT /containers/{id}/archive``: no copy on the daemon's
   side, nothing in memory);
3. the container is started and its JSON lines are followed: progress, then the result (the
   manifest digest and size) or the reason it failed.

Everything is found again by name, so a daemon killed at any point resumes: a container never
started is exported again (the export overwrites), a running one is followed, an exited one is
read. :meth:`Uploader.remove` removes the container and its volume.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import docker
import docker.errors

from node_daemon.errors import PodError
from node_daemon.pods import PodRunner, container_name
from node_daemon.sandboxes import HELPER_LIMITS
from protocol import pod

log = logging.getLogger("dit4c.node.uploads")

EXPORT_SHARE = 40
"""Of the save's progress, the export's part (in percent); the push has the rest."""
UPLOAD_COMMAND = ("python3", "-m", "helpers.upload")
# Compression is done in parallel blocks: two cores make a save of fresh data about twice as
# fast; idle, the helper uses nothing.
UPLOAD_LIMITS: dict[str, Any] = {**HELPER_LIMITS, "nano_cpus": 2_000_000_000}


class UploadFailed(PodError):
    """The upload helper gave up; the message is its reason, for people."""


@dataclass(frozen=True)
class UploadJob:
    """What to push where (``protocol.pod.ENV_UPLOAD`` without the image)."""

    registry_url: str
    repository: str
    tag: str
    token: str
    compression: str = "gzip"
    source: tuple[str, str] | None = None

    def setting(self) -> str:
        source = {"repository": self.source[0], "reference": self.source[1]} \
            if self.source else None
        return json.dumps({"registry_url": self.registry_url, "repository": self.repository,
                           "tag": self.tag, "token": self.token,
                           "compression": self.compression, "source": source})


@dataclass(frozen=True)
class Pushed:
    digest: str
    size: int


class Uploader:
    """Runs upload helpers for ``pods`` (same engine, node, labels and helpers image)."""

    def __init__(self, pods: PodRunner, command: tuple[str, ...] = UPLOAD_COMMAND) -> None:
        self.pods = pods
        self._client: docker.DockerClient = pods.client
        self._command = command

    def push(self, instance_id: str, image: str, job: UploadJob,
             progress: Callable[[int], None]) -> Pushed:
        """Export ``image`` (an id or reference on this engine) and push it; resumes what an
        earlier, interrupted call left. Raises :class:`UploadFailed` with the helper's reason."""
        container = self._container(instance_id, job)
        state = self._state(container)
        if state == "created":
            self._export(container, image, progress)
            self._client.api.start(container)
        return self._follow(container, progress)

    def remove(self, instance_id: str) -> None:
        name = container_name(instance_id, pod.ROLE_UPLOAD)
        with contextlib.suppress(docker.errors.NotFound):
            self._client.api.remove_container(name, force=True, v=True)
        with contextlib.suppress(docker.errors.NotFound):
            self._client.api.remove_volume(name, force=True)

    # -- the steps ------------------------------------------------------------------------

    def _container(self, instance_id: str, job: UploadJob) -> str:
        name = container_name(instance_id, pod.ROLE_UPLOAD)
        with contextlib.suppress(docker.errors.NotFound):
            found = self._client.api.inspect_container(name)
            if f"{pod.ENV_UPLOAD}={job.setting()}" in (found["Config"].get("Env") or []):
                return str(found["Id"])
            # Another job (a retried save, with a fresh token): start over.
            self._client.api.remove_container(found["Id"], force=True)
        labels = self.pods.labels(instance_id, pod.ROLE_UPLOAD)
        with contextlib.suppress(docker.errors.APIError):
            self._client.api.create_volume(name, labels=labels)
        host = self._client.api.create_host_config(
            binds={name: {"bind": pod.UPLOAD_DIR, "mode": "rw"}},
            network_mode=self.pods.settings.network,
            extra_hosts={"host.docker.internal": self.pods.pods_gateway()},
            cap_drop=["ALL"], security_opt=["no-new-privileges"], init=True,
            mem_limit=UPLOAD_LIMITS["mem_limit"], nano_cpus=UPLOAD_LIMITS["nano_cpus"],
            pids_limit=UPLOAD_LIMITS["pids_limit"])
        try:
            made = self._client.api.create_container(
                self.pods.settings.helpers_image, list(self._command), name=name,
                labels=labels, environment={pod.ENV_UPLOAD: job.setting()},
                host_config=host, detach=True)
        except docker.errors.APIError as exc:
            raise PodError(f"cannot create the upload helper: {exc.explanation or exc}") \
                from exc
        return str(made["Id"])

    def _state(self, container: str) -> str:
        return str(self._client.api.inspect_container(container)["State"]["Status"])

    def _export(self, container: str, image: str, progress: Callable[[int], None]) -> None:
        try:
            total = int(self._client.api.inspect_image(image).get("Size") or 0)
            stream = self._client.api.get_image(image)
            counted = _counting(stream, total, progress)
            self._client.api.put_archive(container, pod.UPLOAD_DIR, counted)
        except docker.errors.APIError as exc:
            raise PodError(f"cannot export the saved image: {exc.explanation or exc}") from exc

    def _follow(self, container: str, progress: Callable[[int], None]) -> Pushed:
        last: dict[str, Any] = {}
        for line in _lines(self._client.api.logs(container, stdout=True, stderr=False,
                                                 stream=True, follow=True)):
            try:
                said = json.loads(line)
            except ValueError:
                continue
            if not isinstance(said, dict):
                continue
            if isinstance(said.get("progress"), int):
                progress(EXPORT_SHARE + said["progress"] * (100 - EXPORT_SHARE) // 100)
            else:
                last = said
        code = self._client.api.wait(container).get("StatusCode")
        result = last.get(pod.UPLOAD_RESULT_KEY)
        if code == 0 and isinstance(result, dict) and isinstance(result.get("digest"), str):
            return Pushed(result["digest"], int(result.get("size", 0)))
        reason = last.get("error") or self._tail(container) or f"exit status {code}"
        raise UploadFailed(f"uploading the saved image failed: {reason}")

    def _tail(self, container: str) -> str:
        with contextlib.suppress(docker.errors.APIError):
            text: str = self._client.api.logs(container, tail=3).decode(errors="replace")
            return text.strip()[-300:]
        return ""


def _counting(chunks: Iterator[bytes], total: int, progress: Callable[[int], None]
              ) -> Iterator[bytes]:
    done, last = 0, -1
    for chunk in chunks:
        done += len(chunk)
        percent = min(EXPORT_SHARE, done * EXPORT_SHARE // max(total, 1))
        if percent != last:
            last = percent
            progress(percent)
        yield chunk


def _lines(chunks: Iterator[bytes]) -> Iterator[str]:
    pending = b""
    for chunk in chunks:
        pending += chunk
        *complete, pending = pending.split(b"\n")
        for line in complete:
            yield line.decode(errors="replace")
    if pending:
        yield pending.decode(errors="replace")
