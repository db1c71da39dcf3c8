"""The long-running node daemon: polling, heartbeats, reconciliation, shutdown.

Everything is outbound: the daemon calls the portal for credentials and for what is placed on
it, long-polls its own SQS queue, and sends events; it listens only on a loopback port for
metrics. Losing the network or the control plane is survived: each loop backs off (1 s doubling
to 60 s, with jitter) and resumes when calls succeed again, and no pod is stopped because the
portal cannot be reached. On SIGTERM it stops polling, finishes the commands in hand and
exits, leaving pods running (they outlive the daemon; the next start reconciles them).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable

import aiohttp
import docker
import docker.errors

from node_daemon.agent import Agent, Capacity
from node_daemon.config import (
    METRICS_ADDRESS_FILE,
    RECORDS_DIR,
    NodeIdentity,
    RunSettings,
)
from node_daemon.credentials import CredentialBroker
from node_daemon.egress import apply as apply_egress
from node_daemon.errors import HelpersError, NodeDaemonError, PortalError, QueueError
from node_daemon.files import ensure_private_dir, write_atomic
from node_daemon.helpers_image import HelpersImage, runnable
from node_daemon.metrics import NodeMetrics, serve, stop_serving
from node_daemon.network import ensure_pods_network, pods_bridge
from node_daemon.pods import PodRunner, PodSettings
from node_daemon.portal import PortalClient
from node_daemon.queues import NodeQueues, Received, VisibilityKeeper
from node_daemon.records import RecordStore
from node_daemon.storage_keeper import StorageKeeper
from node_daemon.tunnel_tokens import TunnelTokens
from protocol.errors import MessageError
from protocol.messages import HELPERS_OK, NODE_COMMANDS, decode
from protocol.tokens import SigningKey

log = logging.getLogger("dit4c.node.daemon")

MAX_IN_FLIGHT = 16
"""Commands handled at once; polling pauses at this many (the rest wait safely in the queue)."""
REJECTED_DIR = "rejected"
"""Bodies of commands that could not be understood, kept for a human before deletion."""
SANDBOX_CHECK_SECONDS = 0.5
"""How often the pool is looked at for room (in memory: costs nothing)."""
SANDBOX_RETRY_SECONDS = 10.0


class Backoff:
    """Exponential backoff with full jitter: 1 s doubling up to ``cap``."""

    def __init__(self, first: float = 1.0, cap: float = 60.0) -> None:
        self._first, self._cap, self._next = first, cap, first

    def next(self) -> float:
        delay = random.uniform(self._next / 2, self._next)  # noqa: S311 - jitter, not crypto
        self._next = min(self._cap, self._next * 2)
        return delay

    def reset(self) -> None:
        self._next = self._first


class Daemon:
    """One node's agent loops. :meth:`run` returns after ``stopping`` is set and the commands
    in hand are finished."""

    def __init__(self, *, identity: NodeIdentity, key: SigningKey, settings: RunSettings,
                 docker_client: docker.DockerClient) -> None:
        self.identity = identity
        self.key = key
        self.settings = settings
        self.docker = docker_client
        self.metrics = NodeMetrics()
        self.records = RecordStore(settings.data_dir / RECORDS_DIR)
        self.helpers_reference = settings.helpers_for(identity)
        self.pods = PodRunner(docker_client, PodSettings(
            node_id=identity.node_id, network=settings.pods_network,
            helpers_image=runnable(self.helpers_reference), labels=dict(settings.labels),
            helper_commands=dict(settings.helper_commands), sandboxes=settings.sandboxes,
            sandbox_storage=settings.sandbox_storage))
        self._inflight: set[asyncio.Task[None]] = set()
        self.metrics_address: str | None = None

    async def run(self, stopping: asyncio.Event) -> None:
        settings = self.settings
        server, address = serve(self.metrics, *settings.metrics_listen)
        try:
            gateway = await asyncio.to_thread(ensure_pods_network, self.docker,
                                              settings.pods_network, settings.labels)
            await self._egress()
        except BaseException:
            await asyncio.to_thread(stop_serving, server)
            raise
        self.metrics_address = address
        write_atomic(settings.data_dir / METRICS_ADDRESS_FILE, address.encode())
        log.info("node %s (%s) running: pods network %s (gateway %s), metrics "
                 "http://%s/metrics, capacity %g CPU %d MB", self.identity.node_id,
                 self.identity.name, settings.pods_network, gateway, address,
                 self.identity.cpu, self.identity.memory_mb)
        try:
            async with aiohttp.ClientSession() as session:
                portal = PortalClient(self.identity.portal_url, session)
                broker = CredentialBroker(
                    lambda: portal.credentials(self.identity.node_id, self.key))
                queues = NodeQueues(broker, key=self.key, node_id=self.identity.node_id)
                helpers = HelpersImage(
                    self.docker, self.helpers_reference,
                    lambda repository: portal.registry_token(self.identity.node_id, self.key,
                                                             repository))
                agent = Agent(node_id=self.identity.node_id,
                              capacity=Capacity(self.identity.cpu, self.identity.memory_mb),
                              records=self.records, pods=self.pods, send=queues.send_event,
                              metrics=self.metrics,
                              launch_timeout=settings.launch_timeout_seconds,
                              upload_compression=settings.upload_compression,
                              report_again_after=settings.report_again_seconds)
                tokens = TunnelTokens(
                    agent=agent, records=self.records, pods=self.pods,
                    renew=lambda instance_id: portal.tunnel_token(
                        self.identity.node_id, self.key, instance_id))
                keeper = StorageKeeper(
                    agent=agent, pods=self.pods, client=self.docker,
                    renew=lambda instance_id, **report: portal.storage(
                        self.identity.node_id, self.key, instance_id, **report))
                background = [
                    asyncio.create_task(self._every(
                        settings.reconcile_seconds, lambda: self._reconcile(agent, portal),
                        "reconcile", stopping)),
                    # A firewall reload may flush the pods' egress rules: put them back.
                    asyncio.create_task(self._every(settings.reconcile_seconds, self._egress,
                                                    "egress policy", stopping)),
                    asyncio.create_task(self._every(settings.token_check_seconds,
                                                    tokens.renew_due, "tunnel token renewal",
                                                    stopping)),
                    asyncio.create_task(self._every(settings.storage_seconds, keeper.tend,
                                                    "storage", stopping)),
                    asyncio.create_task(self._every(
                        settings.heartbeat_seconds,
                        lambda: self._heartbeat(agent, queues, helpers), "heartbeat",
                        stopping)),
                ]
                if settings.sandboxes:
                    background.append(asyncio.create_task(self._keep_sandboxes(stopping)))
                try:
                    await self._poll(queues, VisibilityKeeper(queues), agent, stopping)
                    # Finish the commands in hand; pods keep running.
                    if self._inflight:
                        log.info("stopping: finishing %d command(s) in hand", len(self._inflight))
                        await asyncio.gather(*self._inflight, return_exceptions=True)
                finally:
                    for task in background:
                        task.cancel()
                    await asyncio.gather(*background, return_exceptions=True)
        finally:
            await asyncio.to_thread(stop_serving, server)
            drained = await asyncio.to_thread(self.pods.sandboxes.drain)
            if drained:
                log.info("removed %d free pod sandbox(es)", drained)
            await asyncio.to_thread(self.pods.close)
            log.info("node %s stopped; pods left running", self.identity.node_id)

    async def _keep_sandboxes(self, stopping: asyncio.Event) -> None:
        """Keep the pool of free pod sandboxes full: one made at a time, none while a launch
        runs (the pool says when); the pool's reconcile (with the pods') drops broken ones."""
        pool = self.pods.sandboxes
        while not stopping.is_set():
            if pool.wanted():
                try:
                    await asyncio.to_thread(pool.fill_one)
                    continue
                except (NodeDaemonError, docker.errors.DockerException) as exc:
                    log.warning("cannot make a pod sandbox (tried again later): %s", exc)
                    wait = SANDBOX_RETRY_SECONDS
            else:
                wait = SANDBOX_CHECK_SECONDS
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), wait)

    async def _egress(self) -> None:
        """(Re)apply the pods network's egress policy (:mod:`node_daemon.egress`)."""
        policy = self.settings.egress
        if not policy.enforce:
            log.warning("DIT4C_NODE_EGRESS=off: pods reach this host's ports, its LAN and "
                        "169.254.169.254")
            return
        bridge = await asyncio.to_thread(pods_bridge, self.docker, self.settings.pods_network)
        await asyncio.to_thread(apply_egress, policy, bridge)

    async def _every(self, seconds: float, work: Callable[[], Awaitable[object]], what: str,
                     stopping: asyncio.Event) -> None:
        """Run ``work`` now and then every ``seconds``; failures are logged, never fatal."""
        while not stopping.is_set():
            try:
                await work()
            except asyncio.CancelledError:
                raise
            except (NodeDaemonError, docker.errors.DockerException, OSError) as exc:
                log.warning("%s failed (retried in %.0f s): %r", what, seconds, exc)
            except Exception:
                # A bug: say so loudly, but keep the node alive and its pods looked after.
                log.exception("%s failed unexpectedly (retried in %.0f s)", what, seconds)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), seconds)

    async def _reconcile(self, agent: Agent, portal: PortalClient) -> None:
        """The engine against the records, then the records against the portal's placements.
        A portal that cannot be asked changes nothing: pods are never stopped on silence."""
        await agent.reconcile()
        try:
            # After the pods': a leftover instance's sandbox went with its pod.
            await asyncio.to_thread(self.pods.sandboxes.reconcile)
        except NodeDaemonError as exc:
            log.warning("pod sandboxes not reconciled: %s", exc)
        asked_at = time.time()
        try:
            placed = await portal.placed(self.identity.node_id, self.key)
        except PortalError as exc:
            log.warning("cannot ask the portal what is placed here, every pod is kept: %s", exc)
            return
        await agent.check_placed(placed, asked_at)
        await agent.flush()

    async def _heartbeat(self, agent: Agent, queues: NodeQueues, helpers: HelpersImage
                         ) -> None:
        if helpers.status != HELPERS_OK:
            # Pulled (or found) before the first heartbeat; a missing or wrong image is
            # retried at each one, and the portal shows why it is not there.
            try:
                await helpers.ensure()
            except HelpersError as exc:
                log.warning("helpers image: %s", exc)
        await agent.flush()
        await queues.send_event(await agent.heartbeat(helpers=helpers.status))

    async def _poll(self, queues: NodeQueues, keeper: VisibilityKeeper, agent: Agent,
                    stopping: asyncio.Event) -> None:
        backoff = Backoff()
        stop_wait = asyncio.create_task(stopping.wait())
        try:
            while not stopping.is_set():
                if len(self._inflight) >= MAX_IN_FLIGHT:
                    await asyncio.wait({stop_wait, *self._inflight},
                                       return_when=asyncio.FIRST_COMPLETED)
                    continue
                receive = asyncio.create_task(queues.receive(
                    self.settings.poll_wait_seconds,
                    max_messages=min(10, MAX_IN_FLIGHT - len(self._inflight))))
                await asyncio.wait({receive, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
                if not receive.done():
                    # Abandon the long poll: anything it still receives becomes visible again
                    # after the queue's visibility timeout, undeleted.
                    receive.cancel()
                    break
                try:
                    messages = receive.result()
                except QueueError as exc:
                    self.metrics.poll_errors.inc()
                    delay = backoff.next()
                    log.warning("polling failed, retrying in %.1f s: %s", delay, exc)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(asyncio.shield(stop_wait), delay)
                    continue
                backoff.reset()
                for received in messages:
                    task = asyncio.create_task(self._handle(received, queues, keeper, agent))
                    self._inflight.add(task)
                    task.add_done_callback(self._inflight.discard)
        finally:
            stop_wait.cancel()

    async def _handle(self, received: Received, queues: NodeQueues, keeper: VisibilityKeeper,
                      agent: Agent) -> None:
        try:
            message = decode(received.body)  # ids are checked there (protocol.ids)
            if not isinstance(message, NODE_COMMANDS):
                raise MessageError(f"{message.TYPE} is not a node command")
        except MessageError as exc:
            self._reject(received, str(exc))
            await self._delete(received, queues)
            return
        log.info("received %s %s for %s", message.TYPE, message.id,
                 getattr(message, "instance_id", "?"))
        try:
            # A long command (a big pull, a slow save) keeps its message hidden meanwhile.
            async with keeper.holding(received):
                await agent.handle(message)
        except (NodeDaemonError, docker.errors.DockerException, OSError) as exc:
            self.metrics.messages.labels(message.TYPE, "retry").inc()
            log.error("%s %s for %s failed, it will come back: %r", message.TYPE, message.id,
                      getattr(message, "instance_id", "?"), exc)
            return
        except Exception:
            self.metrics.messages.labels(message.TYPE, "retry").inc()
            log.exception("%s %s failed unexpectedly, it will come back", message.TYPE,
                          message.id)
            return
        self.metrics.messages.labels(message.TYPE, "done").inc()
        await self._delete(received, queues)

    def _reject(self, received: Received, why: str) -> None:
        self.metrics.messages.labels("invalid", "rejected").inc()
        directory = self.settings.data_dir / REJECTED_DIR
        ensure_private_dir(directory)
        path = directory / f"{received.message_id}.json"
        write_atomic(path, received.body.encode())
        log.error("rejected command %s (kept in %s): %s", received.message_id, path, why)

    async def _delete(self, received: Received, queues: NodeQueues) -> None:
        try:
            await queues.delete(received.receipt)
        except QueueError as exc:
            # It comes back after the visibility timeout; handling it again is a no-op.
            log.warning("could not delete %s: %s", received.message_id, exc)
