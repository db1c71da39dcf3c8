"""The orchestrator behind ``make run``: start every part, wait until ready, stop on a signal.

Start order (each step registers its own undo, so a failure at any step, a signal, or a child
that dies stops exactly what was started, in reverse order):

1. data directory (locked: one stack per directory), leftovers of a killed run stopped,
   admin password;
2. the Docker engine and the pods network (its gateway is the host's address for pods);
3. moto on loopback, every change journalled (:mod:`infra.local.durable`); the template's
   resources; the saved state recovered (snapshot, then journal), compactions on;
4. the control plane in this process: the Chalice app on 127.0.0.1 and the pods gateway, the SQS
   trigger and the schedule of the template's functions;
5. the edge router (``python -m edge_router``) and the image server as child processes, the
   helpers image pushed to the image server (``DIT4C_PUBLISH_HELPERS``), then
   ``ensure_local_defaults`` (admin, default cluster, demo catalog, a join token) while they
   start, then the node daemon (``join`` once, then ``run``);
6. ready when the health check answers 200, the router answers, the image server answers, and
   a heartbeat of the node has come through the events queue.

A child that exits while the stack runs stops the whole stack with its exit code and the end of
its log: a half-working stack would look ready and fail later in confusing ways; so does a
journal that cannot be written. With ``restart_children`` (``run --restart-children``, what
the fault suite kills children under) such a child is started again instead. Stopping compacts
the journal into a last snapshot after everything that writes has stopped.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, TextIO
from urllib.parse import urlsplit

from control_plane import services
from control_plane.bootstrap import ensure_local_defaults
from infra.local import children, network, registry
from infra.local.aws import AwsEndpoint
from infra.local.catalog import demo_catalog
from infra.local.config import LocalConfig
from infra.local.datadir import AdminPassword, DataDir, shown
from infra.local.durable import Compactor, DurableState, JournaledApp
from infra.local.errors import ChildFailed, LocalStackError
from infra.local.functions import RuleState, ScheduleTimer, SqsPump, load_app, load_handler
from infra.local.helpers_publish import PublishError, publish_helpers
from infra.local.journal import Journal
from infra.local.moto_server import MotoServer
from infra.local.portal import PortalServer, use_process_logging
from infra.local.provision import Provisioner, Stack
from infra.local.registry_gc import RegistryCollector
from infra.local.snapshot import Snapshotter
from infra.local.template import ApiTrigger, ScheduleTrigger, SqsTrigger, Template
from node_daemon.config import IDENTITY_FILE, METRICS_ADDRESS_FILE
from protocol.messages import NodeHeartbeat
from protocol.states import InstanceState

log = logging.getLogger("dit4c.local.stack")

REPO_ROOT = Path(__file__).resolve().parents[2]
JOIN_TIMEOUT = 60.0
REGISTRY_IDLE_SECONDS = 10.0
"""The image server's garbage collection waits until it has served nothing for this long."""
POLL_INTERVAL = 0.25


class _Interrupted(Exception):
    """A stop was asked for (SIGINT/SIGTERM) while the stack was starting."""


@dataclass
class _State:
    """What the start-up found out, for readiness and the ready block."""

    password: AdminPassword | None = None
    gateway: str = ""
    aws: AwsEndpoint | None = None
    cluster_id: str | None = None
    join_token: str = ""
    node_id: str | None = None
    heartbeats: set[str] = field(default_factory=set)
    registry: str | None = None
    """host:port of the image server (its loopback listener), when one runs."""
    registry_program: str = ""
    registry_missing: str = ""
    """Why no image server runs."""
    exporter: bool = False
    """Whether the image exporter runs (with the image server, when its port is free)."""
    helpers_image: str | None = None
    """The helpers image published on the image server (pinned by digest)."""


class LocalStack:
    """See the module docstring. ``run()`` blocks until stopped and returns the exit status."""

    def __init__(
        self,
        config: LocalConfig,
        template: Template | None = None,
        out: TextIO = sys.stdout,
        environ: Mapping[str, str] | None = None,
        restart_children: bool = False,
    ) -> None:
        self._config = config
        self._restart_children = restart_children
        self._template = template
        self._out = out
        # Children get the environment the stack was started with, minus AWS credentials and
        # the admin password: the node must live on its own STS credentials.
        self._base_env = {
            k: v for k, v in (os.environ if environ is None else environ).items()
            if not k.startswith("AWS_") and k != "DIT4C_ADMIN_PASSWORD"
        }
        self._data = DataDir(config.data_dir)
        self._state = _State()
        self._children: list[children.Child] = []
        self._collector: RegistryCollector | None = None
        self._stopping = threading.Event()
        self._heartbeat_lock = threading.Lock()
        self._durable: DurableState | None = None

    # -- the whole run -------------------------------------------------------------------------

    def run(self) -> int:
        started = time.monotonic()
        previous = self._install_signal_handlers()
        status = 0
        with contextlib.ExitStack() as undo:
            try:
                self._start(undo)
                self._wait_ready()
                self._print_ready(time.monotonic() - started)
                self._watch()
            except _Interrupted:
                log.info("stop requested while starting")
            except (LocalStackError, OSError) as exc:
                self._report(str(exc))
                status = 1
            except Exception as exc:
                log.exception("the local stack failed")
                self._report(f"unexpected {type(exc).__name__}: {exc} (a bug; traceback above)")
                status = 1
            stop_started = time.monotonic()
            # Every loop of this process sees it at once (the pump drains after the children).
            self._stopping.set()
            self._say("stopping ...")
            try:
                undo.close()
            except Exception as exc:
                log.exception("stopping did not finish cleanly")
                self._report(f"stopping did not finish cleanly: {exc}")
                status = 1
            self._say(f"stopped in {time.monotonic() - stop_started:.1f} s")
        self._restore_signal_handlers(previous)
        return status

    def stop(self) -> None:
        """Ask a running ``run()`` to stop (what SIGINT/SIGTERM do); safe from any thread."""
        self._stopping.set()

    # -- start ---------------------------------------------------------------------------------

    def _start(self, undo: contextlib.ExitStack) -> None:
        config, data = self._config, self._data
        data.prepare()
        data.lock()
        undo.callback(data.unlock)
        for name in children.stop_leftovers(data.run):
            self._say(f"stopped {name} left running by an earlier stack")
        self._state.password = data.admin_password(config.admin_password)
        self._check_stop()

        docker = network.docker_client()
        undo.callback(docker.close)
        self._state.gateway = network.ensure_pods_network(
            docker, config.pods_network, config.docker_labels
        )
        self._check_stop()

        self._plan_registry()
        journaled = JournaledApp()
        moto = MotoServer("127.0.0.1", config.aws_port, wrap=journaled.wrap)
        aws = moto.start()
        self._state.aws = aws
        undo.callback(moto.stop)
        # Pods reach S3 (their user's storage) on the pods gateway: the same moto, one port,
        # and what they store is journalled like any other change.
        aws_port = urlsplit(aws.url or "").port or 0
        pods_moto = MotoServer(self._state.gateway, aws_port, wrap=journaled.also)
        pods_moto.start()
        undo.callback(pods_moto.stop)
        template = self._template or Template.load()
        stack = Provisioner(aws, config.stack_name).provision(template, self._parameters())
        snapshotter = Snapshotter(
            aws, stack, data.aws, stack.environment["DIT4C_NODE_QUEUE_PREFIX"]
        )
        journal = Journal(data.aws / "journal", sync=config.journal_sync)
        durable = DurableState(journaled, snapshotter, journal)
        recovery = durable.recover()
        for note in recovery.notes:
            self._say(f"warning: {note}")
        log.info("recovered %s", recovery)
        self._durable = durable
        # Registered before anything can write, so it runs after everything has stopped.
        undo.callback(self._final_snapshot, durable, snapshotter)
        compactor = Compactor(durable, config.snapshot_seconds, config.journal_bytes,
                              self._stopping)
        compactor.start()
        undo.callback(compactor.stop)
        self._check_stop()

        os.environ.update(self._control_plane_env(aws, stack))
        self._start_functions(undo, stack, aws)
        # The router and the image server start before the bootstrap: their start-up (other
        # processes, other cores) overlaps it.
        self._start_router(undo, aws, stack)
        self._start_registry(undo)
        self._publish_helpers(docker)
        self._bootstrap()
        self._check_stop()
        self._start_node(undo, aws, stack)

    def _parameters(self) -> dict[str, str]:
        config = self._config
        return {
            "PortalUrl": config.portal_url,
            "RouterDomain": config.public_host,
            "RouterScheme": "http",
            "RouterTunnelUrls": config.pod_tunnel_url(self._state.gateway),
        }

    def _control_plane_env(self, aws: AwsEndpoint, stack: Stack) -> dict[str, str]:
        env = {
            **aws.environment(),
            **stack.environment,
            "DIT4C_ROUTER_PUBLIC_PORT": str(self._config.router_port),
            "DIT4C_POD_PORTAL_URL": self._config.pod_portal_url(self._state.gateway),
            # The gateway's address rather than host.docker.internal: pods of another engine
            # on this machine (a second node) reach it too.
            "DIT4C_POD_AWS_ENDPOINT_URL":
                f"http://{self._state.gateway}:{urlsplit(aws.url or '').port}",
        }
        if self._state.registry is not None:
            port = self._config.registry_port
            env.update({
                "DIT4C_REGISTRY": self._state.registry,
                "DIT4C_REGISTRY_URL": f"http://{self._state.registry}",
                # The gateway's address rather than host.docker.internal: pods of another
                # engine on this machine (a second node) reach it too.
                "DIT4C_POD_REGISTRY_URL": f"http://{self._state.gateway}:{port}",
            })
            if self._state.exporter:
                env["DIT4C_EXPORT_URL"] = self._config.export_url
        return env

    def _start_functions(self, undo: contextlib.ExitStack, stack: Stack, aws: AwsEndpoint) -> None:
        # The API first: importing the app is where Chalice sets up its logging, undone here
        # before any other function runs.
        for spec in stack.functions.values():
            if any(isinstance(t, ApiTrigger) for t in spec.triggers):
                app = load_app(spec)
                use_process_logging(app)
                portal = PortalServer(
                    app,
                    [("127.0.0.1", self._config.portal_port),
                     (self._state.gateway, self._config.portal_port)],
                    timeout=spec.timeout_seconds, memory_mb=spec.memory_mb,
                    function_name=spec.logical_id,
                )
                portal.start()
                undo.callback(portal.stop)
        sqs = aws.client("sqs")
        events = aws.client("events")
        # The control plane switches the reaper's schedule and the events trigger together; the
        # local stack has no trigger to switch, so its pump follows the schedule's rule. A start
        # (its node with it) is work: on, until the reaper finds none (control_plane/standby.py).
        reaper_rule = RuleState(events, stack.environment["DIT4C_REAPER_RULE"])
        events.enable_rule(Name=reaper_rule.name)
        for spec in stack.functions.values():
            for trigger in spec.triggers:
                if isinstance(trigger, SqsTrigger):
                    url = stack.sqs_sources[spec.logical_id]
                    arn = sqs.get_queue_attributes(
                        QueueUrl=url, AttributeNames=["QueueArn"]
                    )["Attributes"]["QueueArn"]
                    pump = SqsPump(
                        spec, load_handler(spec), sqs, queue_url=url, queue_arn=arn,
                        batch_size=trigger.batch_size, region=aws.region,
                        observer=self._observe_event, stopping=self._stopping,
                        enabled=reaper_rule,
                    )
                    pump.start()
                    undo.callback(pump.stop)
                elif isinstance(trigger, ScheduleTrigger):
                    rule = stack.resources[trigger.resource].ref
                    timer = ScheduleTimer(
                        spec, load_handler(spec), rule,
                        self._config.schedule_seconds or trigger.interval_seconds, aws.region,
                        stopping=self._stopping, enabled=RuleState(events, rule),
                    )
                    timer.start()
                    undo.callback(timer.stop)

    def _bootstrap(self) -> None:
        assert self._state.password is not None
        defaults = ensure_local_defaults(self._state.password.value, demo_catalog())
        self._state.cluster_id = defaults.cluster_id
        self._state.join_token = defaults.join_token

    def _start_router(self, undo: contextlib.ExitStack, aws: AwsEndpoint, stack: Stack) -> None:
        config = self._config
        listen = ",".join(f"{host}:{config.router_port}"
                          for host in ("127.0.0.1", self._state.gateway))
        env = {
            **self._child_env(),
            **aws.environment(),
            "DIT4C_ROUTER_DOMAIN": config.public_host,
            "DIT4C_ROUTER_LISTEN": listen,
            "DIT4C_ROUTER_JWKS_URL": f"{config.local_portal_url}/.well-known/jwks.json",
            "DIT4C_ROUTER_REVOCATIONS_URL": f"{config.local_portal_url}/api/revocations",
            "DIT4C_ROUTER_REVOCATIONS_QUEUE_URL": stack.resources["RouterRevocationsQueue"].ref,
            "DIT4C_ROUTER_EVENTS_QUEUE_URL": stack.environment["DIT4C_EVENTS_QUEUE_URL"],
            "DIT4C_ROUTER_ID": "local",
        }
        self._start_child(undo, "edge-router", [sys.executable, "-m", "edge_router"], env)

    def _plan_registry(self) -> None:
        """Whether the image server can run (before the control plane's settings are made)."""
        program = registry.binary()
        if program is None:
            self._state.registry_missing = f"{registry.BINARY} is not installed"
            return
        port = self._config.registry_port
        for host in ("127.0.0.1", self._state.gateway):
            if not _port_free(host, port):
                # Optional: a taken port is reported, not fatal.
                self._state.registry_missing = f"{host}:{port} is in use (DIT4C_REGISTRY_PORT)"
                return
        self._state.registry_program = program
        self._state.registry = f"127.0.0.1:{port}"
        self._state.exporter = _port_free("127.0.0.1", self._config.export_port)

    def _start_registry(self, undo: contextlib.ExitStack) -> None:
        if self._state.registry is None:
            return
        svc = services.current()  # built now: the environment is set
        auth = registry.TokenAuth(
            realm=f"{self._config.portal_url}/registry/token",
            service=svc.config.registry_service, issuer=svc.config.portal_url,
            ca_pem=svc.keys.registry_ca().pem())
        directory = self._data.root / "registry"
        port = self._config.registry_port
        program = self._state.registry_program
        servers = []
        for name, host, config_name in (("image-server", "127.0.0.1", "config.yml"),
                                        ("image-server-pods", self._state.gateway,
                                         "config-pods.yml")):
            config = registry.write_config(directory, f"{host}:{port}", auth, config_name)
            servers.append(self._start_child(undo, name, [program, "serve", str(config)],
                                             self._child_env()))
        if self._state.exporter:
            self._start_child(undo, "image-export", [sys.executable, "-m", "image_export"], {
                **self._child_env(),
                "DIT4C_EXPORT_LISTEN": f"127.0.0.1:{self._config.export_port}",
                "DIT4C_EXPORT_REGISTRY_URL": f"http://{self._state.registry}"})
        collector = RegistryCollector(
            program=program, config=directory / "config.yml", children=servers,
            interval=self._config.registry_gc_seconds, stop_grace=self._config.stop_grace,
            busy=self._image_work_under_way, ready=self._registry_answers,
            stopping=self._stopping)
        collector.start()
        undo.callback(collector.stop)
        self._collector = collector

    def _publish_helpers(self, docker: Any) -> None:
        """Push the helpers image to the image server and make the portal name it (services
        are built again from the changed environment). A failure is reported, not fatal: this
        machine's node runs its own build, only nodes elsewhere need the published image."""
        source = self._config.publish_helpers
        if source is None or self._state.registry is None:
            return
        deadline = time.monotonic() + self._config.ready_timeout
        while not self._registry_answers():
            self._check_stop()
            if time.monotonic() > deadline:
                self._say("helpers image not published: the image server did not answer")
                return
            time.sleep(POLL_INTERVAL)
        registry_tokens = services.current().registry
        try:
            reference = publish_helpers(docker, source, self._state.registry,
                                        registry_tokens.token)
        except PublishError as exc:
            self._say(f"helpers image not published ({exc}); nodes elsewhere cannot join")
            return
        os.environ["DIT4C_HELPERS_IMAGE"] = reference
        services.use(None)
        self._state.helpers_image = reference

    def _image_work_under_way(self) -> bool:
        """A save (push) or a launch (pull) that the collector must not race, or any request
        lately (a ``docker pull`` by hand): the registries log every request."""
        instances = services.current().instances
        if any(instances.in_transition(state)
               for state in (InstanceState.SAVING, InstanceState.STARTING)):
            return True
        quiet_since = time.time() - REGISTRY_IDLE_SECONDS
        for child in self._children:
            if child.name.startswith("image-server"):
                with contextlib.suppress(OSError):
                    if child.log_path.stat().st_mtime > quiet_since:
                        return True
        return False

    def _registry_answers(self) -> bool:
        port = self._config.registry_port
        return all(_http_status(f"http://{host}:{port}/v2/") == 401
                   for host in ("127.0.0.1", self._state.gateway))

    def _start_node(self, undo: contextlib.ExitStack, aws: AwsEndpoint, stack: Stack) -> None:
        node_dir = self._data.node
        self._forget_unknown_node(aws, stack)
        if not (node_dir / IDENTITY_FILE).exists():
            self._join(node_dir)
        self._state.node_id = _node_id(node_dir)
        env = {
            **self._child_env(),
            "DIT4C_NODE_PODS_NETWORK": self._config.pods_network,
            # The pods' helpers find the router and the portal on this host (the gateway),
            # and the storage and upload helpers the AWS endpoint and the image server; every
            # other port of the host stays closed to pods (node_daemon/egress.py).
            "DIT4C_NODE_POD_HOST_PORTS": self._base_env.get(
                "DIT4C_NODE_POD_HOST_PORTS",
                ",".join(str(port) for port in (
                    self._config.router_port, self._config.portal_port,
                    urlsplit(aws.url or "").port, self._config.registry_port) if port)),
            # A free port unless asked for one: a fixed default would clash with another stack.
            "DIT4C_NODE_METRICS_LISTEN": self._base_env.get(
                "DIT4C_NODE_METRICS_LISTEN", "127.0.0.1:0"
            ),
            # The node and the image server share this machine: compressing a save's layers
            # would cost CPU and save nothing on the wire.
            "DIT4C_NODE_UPLOAD_COMPRESSION": self._base_env.get(
                "DIT4C_NODE_UPLOAD_COMPRESSION", "none"
            ),
            # One pod sandbox ready: a launch skips the holder's and the listener's start.
            "DIT4C_NODE_SANDBOXES": self._base_env.get("DIT4C_NODE_SANDBOXES", "1"),
        }
        argv = [sys.executable, "-m", "node_daemon", "run", "--data-dir", str(node_dir)]
        self._start_child(undo, "node-daemon", argv, env)

    def _join(self, node_dir: Path) -> None:
        argv = [
            sys.executable, "-m", "node_daemon", "join",
            "--portal", self._config.local_portal_url, "--token", self._state.join_token,
            "--data-dir", str(node_dir), "--name", "local",
        ]
        join = children.Child("node-join", argv, self._child_env(), log_dir=self._data.logs,
                              run_dir=self._data.run, cwd=REPO_ROOT)
        join.start()
        deadline = time.monotonic() + JOIN_TIMEOUT
        try:
            while (code := join.poll()) is None:
                self._check_stop()
                if time.monotonic() > deadline:
                    raise ChildFailed(
                        f"node-join did not finish within {JOIN_TIMEOUT:.0f} s; end of "
                        f"{join.log_path}:\n{join.tail()}"
                    )
                time.sleep(POLL_INTERVAL)
        finally:
            join.stop(self._config.stop_grace)
        if code != 0:
            raise ChildFailed(
                f"node-join exited with status {code}; end of {join.log_path}:\n{join.tail()}"
            )

    def _forget_unknown_node(self, aws: AwsEndpoint, stack: Stack) -> None:
        """A node identity the control plane does not know (its state was lost) is set aside."""
        node_dir = self._data.node
        node_id = _node_id(node_dir)
        if node_id is None:
            return
        item = aws.client("dynamodb").get_item(
            TableName=stack.environment["DIT4C_NODES_TABLE"], Key={"node_id": {"S": node_id}}
        )
        if "Item" in item:
            return
        aside = node_dir.with_name(f"node.unknown-{int(time.time())}")
        node_dir.rename(aside)
        self._say(f"node {node_id} is unknown to the control plane (its state was lost): "
                  f"moved {node_dir} to {aside} and joining again")

    def _child_env(self) -> dict[str, str]:
        pythonpath = os.pathsep.join(
            p for p in (str(REPO_ROOT), self._base_env.get("PYTHONPATH", "")) if p
        )
        return {**self._base_env, "PYTHONPATH": pythonpath, "PYTHONUNBUFFERED": "1"}

    def _start_child(
        self, undo: contextlib.ExitStack, name: str, argv: list[str], env: dict[str, str]
    ) -> children.Child:
        child = children.Child(name, argv, env, log_dir=self._data.logs, run_dir=self._data.run,
                               cwd=REPO_ROOT)
        child.start()
        if not self._children:
            undo.callback(self._stop_children)
        self._children.append(child)
        return child

    def _stop_children(self) -> None:
        """Every child at once: each gets SIGTERM now, so the grace periods overlap."""
        running = list(self._children)
        for child in running:
            child.terminate()
        for child in running:
            code = child.stop(self._config.stop_grace)
            log.info("%s stopped (status %s)", child.name, code)

    def _final_snapshot(self, durable: DurableState, snapshotter: Snapshotter) -> None:
        summary = durable.close()
        self._say(f"saved {summary} to {snapshotter.manifest_path}")

    # -- readiness and watching ----------------------------------------------------------------

    def _observe_event(self, body: str) -> None:
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            message = json.loads(body)
            if message.get("type") == NodeHeartbeat.TYPE:
                with self._heartbeat_lock:
                    self._state.heartbeats.add(str(message.get("node_id")))

    def _wait_ready(self) -> None:
        config = self._config
        checks: dict[str, Callable[[], bool]] = {
            "portal health": lambda: _http_status(f"{config.local_portal_url}/api/health") == 200,
            "edge router": lambda: _http_status(
                f"http://127.0.0.1:{config.router_port}/",
                host=f"nothing.{config.public_host}:{config.router_port}",
            ) is not None,
            "node heartbeat": self._heartbeat_seen,
        }
        if self._state.registry is not None:
            # 401: up, and asking for a token (both listeners).
            checks["image server"] = self._registry_answers
        if self._state.exporter:
            checks["image exporter"] = lambda: _http_status(
                f"http://127.0.0.1:{config.export_port}/health") == 200
        deadline = time.monotonic() + config.ready_timeout
        pending = dict(checks)
        while pending:
            self._check_stop()
            self._check_children()
            for name, check in list(pending.items()):
                if check():
                    log.info("ready: %s", name)
                    del pending[name]
            if not pending:
                break
            if time.monotonic() > deadline:
                raise ChildFailed(
                    f"not ready after {config.ready_timeout:.0f} s (DIT4C_READY_TIMEOUT): "
                    f"waiting for {', '.join(pending)}; logs in {self._data.logs}"
                )
            time.sleep(POLL_INTERVAL)

    def _heartbeat_seen(self) -> bool:
        with self._heartbeat_lock:
            return self._state.node_id in self._state.heartbeats

    def _watch(self) -> None:
        while not self._stopping.wait(POLL_INTERVAL):
            self._check_children()

    def _check_children(self) -> None:
        if self._durable is not None and self._durable.failure is not None:
            raise LocalStackError(
                f"the AWS state can no longer be saved ({self._durable.failure}); the stack "
                "stops rather than acknowledge what it could lose"
            )
        collector = self._collector
        for child in self._children:
            if collector is not None and collector.paused and child.name in collector.names():
                continue  # stopped on purpose, for the garbage collection
            code = child.poll()
            if code is not None and self._restart_children and not self._stopping.is_set():
                log.warning("%s exited with status %s; starting it again", child.name, code)
                self._say(f"{child.name} exited with status {code}; starting it again")
                child.start()
            elif code is not None:
                raise ChildFailed(
                    f"{child.name} exited unexpectedly with status {code}; the stack stops. "
                    f"End of {child.log_path}:\n{child.tail()}"
                )

    def _check_stop(self) -> None:
        if self._stopping.is_set():
            raise _Interrupted

    # -- output --------------------------------------------------------------------------------

    def _print_ready(self, seconds: float) -> None:
        config, state = self._config, self._state
        assert state.password is not None and state.aws is not None
        router = f"http://{config.public_host}:{config.router_port}"
        lines = [
            f"dit4c local stack ready in {seconds:.1f} s",
            f"  portal:     {config.portal_url}",
            f"  login:      admin / {state.password.value}   ({state.password.source})",
            f"  instances:  http://<instance id>.{config.public_host}:{config.router_port}/",
            f"  router:     {router}   (pods dial {config.pod_tunnel_url(state.gateway)})",
        ]
        if state.node_id:
            lines.append(f"  node:       {state.node_id} in cluster {state.cluster_id}, pods on "
                         f"network {config.pods_network} (gateway {state.gateway})")
            metrics = self._data.node / METRICS_ADDRESS_FILE
            with contextlib.suppress(OSError):
                lines.append(f"              metrics http://{metrics.read_text().strip()}/metrics")
        if state.registry is not None:
            lines.append(f"  images:     {state.registry}   (docker-registry, tokens from "
                         f"{config.portal_url}/registry/token; pods push to "
                         f"{state.gateway}:{config.registry_port})")
            if state.exporter:
                lines.append(f"  exports:    {config.export_url}   (image export links)")
            if state.helpers_image:
                lines.append(f"  helpers:    {state.helpers_image}   (what nodes that join "
                             "pull; join tokens: portal, Nodes)")
        else:
            lines.append(f"  images:     no image server: {state.registry_missing}")
        lines += [
            f"  AWS (moto): {state.aws.url}",
            f"  data:       {shown(self._data.root)}   (logs in {shown(self._data.logs)})",
        ]
        lines.append("Ctrl-C stops everything.")
        print("\n".join(lines), file=self._out, flush=True)

    def _say(self, text: str) -> None:
        print(f"dit4c: {text}", file=self._out, flush=True)

    def _report(self, text: str) -> None:
        print(f"dit4c: error: {text}", file=sys.stderr, flush=True)

    # -- signals -------------------------------------------------------------------------------

    def _install_signal_handlers(self) -> dict[int, Any]:
        if threading.current_thread() is not threading.main_thread():
            return {}
        previous: dict[int, Any] = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, self._on_signal)
        return previous

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._stopping.set()

    @staticmethod
    def _restore_signal_handlers(previous: dict[int, Any]) -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _node_id(node_dir: Path) -> str | None:
    try:
        return str(json.loads((node_dir / IDENTITY_FILE).read_text())["node_id"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise LocalStackError(
            f"{node_dir / IDENTITY_FILE} is unreadable ({exc}); move {node_dir} aside to "
            "join a new node"
        ) from exc


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as probe:
        # As servers bind: connections in TIME_WAIT from an earlier run do not count.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def _http_status(url: str, host: str | None = None) -> int | None:
    """The HTTP status of a GET (any status counts), or None when nothing answers."""
    request = urllib.request.Request(url, headers={"Host": host} if host else {})  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=2) as response:  # noqa: S310 - our URL
            return int(response.status)
    except urllib.error.HTTPError as exc:
        exc.close()
        return int(exc.code)
    except (urllib.error.URLError, OSError):
        return None
