"""Commands and reconciliation: records -> pods -> reported states.

The agent owns the order of effects that makes the node safe to kill at any moment:

1. a command changes the instance's durable record (what it should be);
2. the pod is brought to that (:meth:`Agent._converge`, the one place that does it);
3. the new state is written to the record, then sent to the events queue (an unsent state is
   retried by :meth:`Agent.flush`);
4. only then does the caller delete the command from the queue.

:meth:`Agent.reconcile` runs the same :meth:`Agent._converge` for every record, so a daemon
restarted after SIGKILL finishes (or rolls back) whatever it was doing, and removes containers
of instances it has no record of. :meth:`Agent.check_placed` discards what the portal says is
no longer placed on this node (deleted, discarded, placed elsewhere), only on the portal's
word, never because it could not be asked; and reports again a state the portal has not taken.
Work on one instance is serialised by a per-instance lock; different instances proceed
concurrently.

Ordering rules (SQS delivers at least once, in any order):

- a start for an instance that is already known is a duplicate: it finishes a half-done launch
  or does nothing; a start after a stop or discard is stale and ignored, unless the control
  plane sent it after that discard (by ``sent_at``): then the instance was placed here anew
  (the reaper re-placing it where it was), and it starts;
- a stop before any start leaves a stopped record, so the late start is ignored;
- a stop, save or older start after a discard is ignored; a discard removes everything, unless
  it was sent before the start the node runs (a stale discard of an earlier placement).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace

import docker.errors

from node_daemon import __version__
from node_daemon.errors import LaunchError, NodeDaemonError, PodError
from node_daemon.metrics import NodeMetrics
from node_daemon.pods import PodRunner
from node_daemon.records import Desired, InstanceRecord, RecordStore
from node_daemon.uploads import Uploader, UploadJob
from protocol.errors import RegistryError
from protocol.messages import (
    DiscardInstance,
    InstanceStateEvent,
    Message,
    NodeHeartbeat,
    SaveInstance,
    StartInstance,
    StopInstance,
    StorageAccess,
)
from protocol.registry import parse_reference
from protocol.states import InstanceState as S

log = logging.getLogger("dit4c.node.agent")
state_log = logging.getLogger("dit4c.node.state")

DEFAULT_GRACE_SECONDS = 10.0
PROGRESS_EVERY_SECONDS = 1.0

Send = Callable[[Message], Awaitable[None]]


@dataclass(frozen=True)
class Capacity:
    cpu: float
    memory_mb: int


class Agent:
    """Applies node commands and reconciles; see the module docstring for the guarantees.

    ``send`` puts one message on the events queue and raises on failure; the agent never lets
    a failed send undo or block pod work.
    """

    def __init__(self, *, node_id: str, capacity: Capacity, records: RecordStore,
                 pods: PodRunner, send: Send, metrics: NodeMetrics,
                 launch_timeout: float, uploads: Uploader | None = None,
                 upload_compression: str = "gzip", report_again_after: float = 60.0) -> None:
        self.node_id = node_id
        self.capacity = capacity
        self.records = records
        self.pods = pods
        self.uploads = uploads or Uploader(pods)
        self.upload_compression = upload_compression
        self._send = send
        self.metrics = metrics
        self.launch_timeout = launch_timeout
        self.report_again_after = report_again_after
        self._locks: dict[str, asyncio.Lock] = {}

    def lock(self, instance_id: str) -> asyncio.Lock:
        """What serialises work on one instance (commands, reconcile, token renewals)."""
        return self._lock(instance_id)

    def _lock(self, instance_id: str) -> asyncio.Lock:
        return self._locks.setdefault(instance_id, asyncio.Lock())

    # -- commands ------------------------------------------------------------------------

    async def handle(self, message: Message) -> None:
        """Apply one command; returns once its effect is durable (then delete the message).

        Raises NodeDaemonError or a Docker connection error when the effect could not be made
        (the message stays on the queue and comes back).
        """
        instance_id = getattr(message, "instance_id", None)
        if not isinstance(instance_id, str):
            raise NodeDaemonError(f"{message.TYPE} is not a node command")
        await self._get(instance_id)  # validates the id before taking a lock for it
        async with self._lock(instance_id):
            record = await self._get(instance_id)
            if isinstance(message, StartInstance):
                await self._on_start(message, record)
            elif isinstance(message, StopInstance):
                await self._on_stop(message, record)
            elif isinstance(message, SaveInstance):
                await self._on_save(message, record)
            elif isinstance(message, DiscardInstance):
                await self._on_discard(message, record)
            else:
                raise NodeDaemonError(f"{message.TYPE} is not a node command")

    async def _on_start(self, start: StartInstance, record: InstanceRecord | None) -> None:
        if record is not None and record.desired is Desired.DISCARDED \
                and record.discarded_at is not None and start.sent_at > record.discarded_at:
            log.info("start of %s sent after its discard: placed here anew", start.instance_id)
            record = None
        if record is not None:
            if record.desired is not Desired.RUNNING:
                log.info("start of %s ignored: it is already %s", start.instance_id,
                         record.desired)
                return
            await self._converge(record, present=True)  # a duplicate: finish or no-op
            return
        record = InstanceRecord(start.instance_id, Desired.RUNNING, start=start)
        shortfall = _shortfall(self.capacity, start, await self._all())
        if shortfall:
            record.start = None  # nothing will run: keep no secrets
            record.state = S.FAILED
            record.reason = shortfall
            await self._put(record)
            self.metrics.launches.labels("no_room").inc()
            await self._announce(record, None)
            return
        await self._put(record)
        await self._converge(record, present=True, received=time.monotonic())

    # -- durable records, off the event loop (each write is fsynced) -------------------

    async def _get(self, instance_id: str) -> InstanceRecord | None:
        return await asyncio.to_thread(self.records.get, instance_id)

    async def _put(self, record: InstanceRecord) -> None:
        await asyncio.to_thread(self.records.put, record)

    async def _all(self) -> list[InstanceRecord]:
        return await asyncio.to_thread(self.records.all)

    async def _on_stop(self, stop: StopInstance, record: InstanceRecord | None) -> None:
        if record is None:
            # The stop overtook its start: remember it, so the start is ignored when it comes.
            record = InstanceRecord(stop.instance_id, Desired.STOPPED)
        elif record.desired is not Desired.RUNNING:
            log.info("stop of %s ignored: it is already %s", stop.instance_id, record.desired)
            return
        record.desired = Desired.STOPPED
        await self._put(record)
        await self._converge(record, present=True, grace=stop.grace_seconds)

    async def _on_save(self, save: SaveInstance, record: InstanceRecord | None) -> None:
        if record is None or record.desired is Desired.DISCARDED or (
                record.start is None and record.desired is not Desired.SAVED):
            log.info("save of %s ignored: nothing of it runs on this node", save.instance_id)
            return
        if record.desired is Desired.SAVED:
            await self._converge(record, present=True)  # duplicate: finish or no-op
            return
        record.desired = Desired.SAVED
        record.save_image = save.image
        record.save = save
        await self._put(record)
        await self._converge(record, present=True)

    async def _on_discard(self, discard: DiscardInstance,
                          record: InstanceRecord | None) -> None:
        if record is None:
            record = InstanceRecord(discard.instance_id, Desired.DISCARDED)
        elif record.start is not None and record.start.sent_at > discard.sent_at:
            log.info("discard of %s ignored: sent before the start it runs now",
                     discard.instance_id)
            return
        record.desired = Desired.DISCARDED
        record.discarded_at = max(discard.sent_at, record.discarded_at or "")
        await self._put(record)
        await self._converge(record, present=True)

    # -- converging one instance ---------------------------------------------------------

    async def _converge(self, record: InstanceRecord, *, present: bool,
                        grace: float = DEFAULT_GRACE_SECONDS,
                        received: float | None = None) -> None:
        """Bring the pod to ``record.desired`` and record/report the resulting state.

        ``present``: whether the engine has anything of this instance (reconcile knows;
        commands assume so).
        """
        if record.desired is Desired.RUNNING:
            await self._converge_running(record, present, received)
        elif record.desired is Desired.STOPPED:
            if present:
                await asyncio.to_thread(self.pods.stop, record.instance_id, grace)
            if record.state not in (S.STOPPED, S.FAILED):
                await self._set_state(record, S.STOPPED)
        elif record.desired is Desired.SAVED:
            if record.state != S.SAVED:
                await self._save(record, grace)
            elif record.saved_image != record.save_image and (
                    record.start is not None or record.committed_image is not None):
                await self._drop_saved(record)  # killed between saved and the clean-up
        else:
            if present:
                await asyncio.to_thread(self.pods.remove, record.instance_id)
            if record.committed_image and record.save_image:  # a save that never got out
                await asyncio.to_thread(self.pods.forget_image, record.save_image)
                record.committed_image = None
            record.start = None  # drop the secrets with the pod
            record.save = None
            if record.state != S.DISCARDED:
                await self._set_state(record, S.DISCARDED)
            else:
                await self._put(record)

    async def _converge_running(self, record: InstanceRecord, present: bool,
                                received: float | None) -> None:
        start = record.start
        if record.state == S.FAILED or start is None:
            if present:
                await asyncio.to_thread(self.pods.stop, record.instance_id, 0)
            if record.state != S.FAILED:
                await self._set_state(record, S.FAILED, reason="the start command was lost")
            return
        if record.state == S.RUNNING:
            reason = await asyncio.to_thread(self.pods.check, start)
            if reason is not None:
                # A container of a running pod exited (the tool, or a helper it needs).
                await asyncio.to_thread(self.pods.stop, record.instance_id, 0)
                await self._set_state(record, S.FAILED, reason=reason)
            return
        await self._launch(record, start, received)

    async def _launch(self, record: InstanceRecord, start: StartInstance,
                      received: float | None) -> None:
        began = received if received is not None else time.monotonic()
        if record.state != S.STARTING:
            await self._set_state(record, S.STARTING)
        progress = self._progress_sender(record, S.STARTING, "pull")
        try:
            await asyncio.to_thread(self.pods.launch, start, self.launch_timeout, progress)
        except LaunchError as exc:
            self.metrics.launches.labels("failed").inc()
            # Stopped, not removed: the containers and their logs stay until discard.
            await asyncio.to_thread(self.pods.stop, record.instance_id, 0)
            await self._set_state(record, S.FAILED, reason=str(exc))
            return
        self.metrics.launches.labels("running").inc()
        self.metrics.launch_seconds.observe(time.monotonic() - began)
        await self._set_state(record, S.RUNNING)

    def _progress_sender(self, record: InstanceRecord, state: S, key: str
                         ) -> Callable[[int], None]:
        """A callback for a worker thread: ``{key: percent}`` events of ``state``, at most one
        a second (and always the final 100)."""
        loop = asyncio.get_running_loop()
        last_sent = 0.0

        def progress(percent: int) -> None:
            nonlocal last_sent
            now = time.monotonic()
            if percent < 100 and now - last_sent < PROGRESS_EVERY_SECONDS:
                return
            last_sent = now
            event = self._event(record, state, progress={key: percent})
            asyncio.run_coroutine_threadsafe(self._send_quietly(event), loop)

        return progress

    async def _save(self, record: InstanceRecord, grace: float) -> None:
        """Commit the stopped tool container, push it with the upload helper, and drop what
        the node no longer needs. A failure leaves the instance stopped with the reason, and
        the commit kept for a retry; a daemon killed meanwhile resumes here."""
        assert record.save_image is not None
        instance_id = record.instance_id
        await asyncio.to_thread(self.pods.stop, instance_id, grace)
        if record.state != S.SAVING:
            await self._set_state(record, S.SAVING)
        try:
            if record.committed_image is None or not await asyncio.to_thread(
                    self.pods.has_image, record.committed_image):
                record.committed_image = await asyncio.to_thread(
                    self.pods.commit, instance_id, record.save_image)
                await self._put(record)
            job = self._upload_job(record)
            if job is None:
                # A save without an image server (an older control plane): the image stays
                # on this node, under the name the save asked for.
                log.info("saved %s as %s on this node only", instance_id, record.save_image)
                record.saved_image = record.save_image
            else:
                pushed = await asyncio.to_thread(
                    self.uploads.push, instance_id, record.committed_image, job,
                    self._progress_sender(record, S.SAVING, "save"))
                target = parse_reference(record.save_image)
                record.saved_image = f"{target.registry}/{target.repository}@{pushed.digest}"
                record.saved_size = pushed.size
                log.info("saved %s as %s (%d bytes)", instance_id, record.saved_image,
                         pushed.size)
        except (PodError, RegistryError) as exc:
            # saving -> stopped: the container and the commit are kept, the user can retry.
            await asyncio.to_thread(self.uploads.remove, instance_id)
            record.desired = Desired.STOPPED
            record.save = None
            await self._set_state(record, S.STOPPED, reason=str(exc))
            return
        record.save = None
        await self._set_state(record, S.SAVED)
        if job is not None:
            # Reported first (the user waits for that), then the clean-up: reconciliation
            # finishes it if the daemon dies in between.
            await self._drop_saved(record)

    async def _drop_saved(self, record: InstanceRecord) -> None:
        """The image is on the image server: the pod, its volumes, the upload helper, the
        commit and the secrets leave this node."""
        await asyncio.to_thread(self.pods.remove, record.instance_id)
        if record.save_image is not None:
            await asyncio.to_thread(self.pods.forget_image, record.save_image)
        record.committed_image = None
        record.start = None
        await self._put(record)

    def _upload_job(self, record: InstanceRecord) -> UploadJob | None:
        save = record.save
        if save is None or save.registry is None or not save.upload_url:
            return None
        target = parse_reference(save.image)
        source = None
        start = record.start
        if start is not None:
            with contextlib.suppress(RegistryError):
                launched = parse_reference(start.image)
                if launched.registry == target.registry:
                    source = (launched.repository, launched.pinned)
        return UploadJob(registry_url=save.upload_url, repository=target.repository,
                         tag=target.tag or "saved", token=save.registry.token,
                         compression=self.upload_compression, source=source)

    # -- states and events ---------------------------------------------------------------

    def _event(self, record: InstanceRecord, state: str,
               progress: dict[str, int] | None = None) -> InstanceStateEvent:
        saved = state == S.SAVED
        return InstanceStateEvent(
            node_id=self.node_id, instance_id=record.instance_id, state=state,
            reason=record.reason, progress=progress or {},
            image=record.saved_image if saved else None,
            size=record.saved_size if saved else None)

    async def _set_state(self, record: InstanceRecord, state: S,
                         reason: str | None = None) -> None:
        previous = record.state
        record.state = state
        record.reason = reason
        await self._put(record)
        await self._announce(record, previous)

    async def _announce(self, record: InstanceRecord, previous: str | None) -> None:
        state_log.info("instance=%s state=%s previous=%s reason=%r node=%s",
                       record.instance_id, record.state, previous, record.reason, self.node_id)
        await self._refresh_gauge()
        await self._report(record)

    async def _report(self, record: InstanceRecord) -> None:
        assert record.state is not None
        if await self._send_quietly(self._event(record, record.state)):
            record.reported = record.state
            await self._put(record)

    async def _send_quietly(self, message: Message) -> bool:
        try:
            await self._send(message)
        except NodeDaemonError as exc:
            self.metrics.event_send_errors.inc()
            log.warning("event %s not sent (will retry): %s", message.TYPE, exc)
            return False
        return True

    async def flush(self) -> int:
        """Send every recorded state the events queue has not accepted yet; return how many."""
        sent = 0
        for record in await self._all():
            if record.state is not None and record.state != record.reported:
                async with self._lock(record.instance_id):
                    fresh = await self._get(record.instance_id)
                    if fresh and fresh.state is not None and fresh.state != fresh.reported:
                        await self._report(fresh)
                        sent += int(fresh.reported == fresh.state)
        return sent

    # -- storage (node_daemon.storage_keeper) --------------------------------------------

    async def with_storage(self) -> list[InstanceRecord]:
        """The records of instances that have storage and are starting or running."""
        return [r for r in await self._all() if r.desired is Desired.RUNNING
                and r.state in (S.STARTING, S.RUNNING) and r.start is not None
                and r.start.storage]

    async def renewed_storage(self, instance_id: str, access: StorageAccess) -> None:
        """Keep renewed storage in the instance's record (a helper made again, by this daemon
        or the next, starts from it)."""
        async with self._lock(instance_id):
            record = await self._get(instance_id)
            if record is not None and record.start is not None \
                    and record.desired is Desired.RUNNING:
                record.start = replace(record.start, storage=access)
                await self._put(record)

    # -- reconciling ---------------------------------------------------------------------

    async def reconcile(self) -> dict[str, int]:
        """Compare pods found on the engine with the records and repair the difference.

        Returns counts: instances by state, plus ``leftovers`` removed (pods with no record).
        """
        found = await asyncio.to_thread(self.pods.instances)
        for record in await self._all():
            present = found.pop(record.instance_id, None) is not None
            lock = self._lock(record.instance_id)
            if lock.locked():
                continue  # a command is working on it right now
            async with lock:
                fresh = await self._get(record.instance_id)
                if fresh is None:
                    continue
                try:
                    await self._converge(fresh, present=present)
                except (NodeDaemonError, docker.errors.DockerException) as exc:
                    log.error("reconcile of %s failed (retried next time): %r",
                              fresh.instance_id, exc)
        for instance_id, kinds in found.items():
            # Made by this node but unknown to it (e.g. a data dir restored from backup).
            log.warning("removing leftovers of unknown instance %s: %s", instance_id,
                        ", ".join(kinds))
            await asyncio.to_thread(self.pods.remove, instance_id)
        await self.flush()
        await asyncio.to_thread(self.records.prune_tombstones)
        counts = await self._refresh_gauge()
        counts["leftovers"] = len(found)
        log.info("reconciled: %s", " ".join(f"{k}={v}" for k, v in sorted(counts.items())))
        return counts

    async def check_placed(self, placed: Mapping[str, S], asked_at: float) -> dict[str, int]:
        """The portal's answer (``placed``: what it has on this node, asked at ``asked_at``)
        against the records. An instance it does not have here, or has as discarded, is
        discarded. One whose state it has not taken although it could (it says ``stopping``,
        this node has it ``stopped``, since ``report_again_after`` seconds: the report was
        lost with a queue) is reported again by the next :meth:`flush`. A record changed since
        the question was asked waits for the next time: the answer may predate it. Returns
        counts: ``gone``, ``reported_again``."""
        counts = {"gone": 0, "reported_again": 0}
        for record in await self._all():
            if record.desired is Desired.DISCARDED or record.updated_at >= asked_at:
                continue
            state = placed.get(record.instance_id)
            if state is None or state is S.DISCARDED:
                log.warning("the portal has instance %s %s: discarding what this node holds "
                            "of it", record.instance_id,
                            "as discarded" if state is not None else "no longer on this node")
                # Newer than the start it runs whatever this machine's clock says: the portal's
                # word is the latest there is.
                now = DiscardInstance(instance_id=record.instance_id)
                if record.start is not None and record.start.sent_at > now.sent_at:
                    now = DiscardInstance(instance_id=record.instance_id,
                                          sent_at=record.start.sent_at)
                await self.handle(now)
                counts["gone"] += 1
            elif record.state is not None and record.state != state \
                    and state.can_become(S(record.state)) and record.reported == record.state \
                    and asked_at - record.updated_at >= self.report_again_after:
                async with self._lock(record.instance_id):
                    fresh = await self._get(record.instance_id)
                    if fresh is not None and fresh.state == record.state:
                        log.info("the portal has instance %s as %s, this node as %s: "
                                 "reporting it again", record.instance_id, state.value,
                                 record.state)
                        fresh.reported = None
                        await self._put(fresh)
                        counts["reported_again"] += 1
        return counts

    async def counts(self) -> dict[str, int]:
        return dict(Counter(r.state or "unknown" for r in await self._all()))

    async def _refresh_gauge(self) -> dict[str, int]:
        counts = await self.counts()
        self.metrics.set_pods({k: v for k, v in counts.items() if k != S.DISCARDED})
        return counts

    async def heartbeat(self, helpers: str | None = None) -> NodeHeartbeat:
        records = await self._all()
        cpu_used, mem_used = _used(records)
        try:
            load = os.getloadavg()[0]
        except OSError:
            load = 0.0
        return NodeHeartbeat(
            node_id=self.node_id, version=__version__, cpu_total=self.capacity.cpu,
            memory_mb_total=self.capacity.memory_mb, cpu_used=cpu_used,
            memory_mb_used=mem_used, load=load,
            running=sorted(r.instance_id for r in records if r.state == S.RUNNING
                           and r.desired is Desired.RUNNING),
            holds=sorted(r.instance_id for r in records if r.desired is not Desired.DISCARDED),
            helpers=helpers)


def _used(records: list[InstanceRecord]) -> tuple[float, int]:
    """CPU and memory held by the instances that run or are about to."""
    starts = [r.start for r in records
              if r.desired is Desired.RUNNING and r.state != S.FAILED and r.start]
    return sum(s.cpu for s in starts), sum(s.memory_mb for s in starts)


def _shortfall(capacity: Capacity, start: StartInstance,
               records: list[InstanceRecord]) -> str | None:
    cpu_used, mem_used = _used(records)
    if (cpu_used + start.cpu > capacity.cpu + 1e-9
            or mem_used + start.memory_mb > capacity.memory_mb):
        return (f"node has no room: the instance needs {start.cpu:g} CPU and "
                f"{start.memory_mb} MB; free are {capacity.cpu - cpu_used:g} CPU and "
                f"{capacity.memory_mb - mem_used} MB")
    return None
