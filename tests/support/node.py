"""The node daemon's test harness (tests and ``bench/node_bench.py``), against the real
control plane of :mod:`tests.support.control_plane`:

- :class:`NodeProcess` — ``python -m node_daemon join|run`` as a real process;
- :class:`EventLog` — reads the events queue the way the control plane's consumer would;
- :func:`node_env` — a test node's settings, with a pods network of its own and the helpers
  of the helpers image (:func:`helper_commands_for`);
- :func:`sample_start` — a start command as the scheduler would send it.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
from moto.server import ThreadedMotoServer

from node_daemon.network import ensure_pods_network
from node_daemon.pods import missing_modules
from protocol import pod
from protocol.errors import MessageError
from protocol.messages import (
    InstanceStateEvent,
    Message,
    NodeHeartbeat,
    OAuthClient,
    StartInstance,
    decode,
)
from tests.support.control_plane import ControlPlane


class EventLog:
    """Everything the node sent to the events queue, read as the control plane would.

    With ``node``, a wait that times out shows the tail of that node's log too.
    """

    def __init__(self, portal: ControlPlane, node: NodeProcess | None = None) -> None:
        self._sqs = portal.sqs
        self._url = portal.events_queue_url
        self._node = node
        self.events: list[Message] = []

    def poll(self, wait: int = 1) -> list[Message]:
        answer = self._sqs.receive_message(QueueUrl=self._url, WaitTimeSeconds=wait,
                                           MaxNumberOfMessages=10)
        fresh = []
        for raw in answer.get("Messages", []):
            self._sqs.delete_message(QueueUrl=self._url, ReceiptHandle=raw["ReceiptHandle"])
            try:
                fresh.append(decode(raw["Body"]))
            except MessageError:
                fresh.append(Message(id=json.loads(raw["Body"]).get("id", "?")))
        self.events.extend(fresh)
        return fresh

    def states(self, instance_id: str) -> list[InstanceStateEvent]:
        return [e for e in self.events
                if isinstance(e, InstanceStateEvent) and e.instance_id == instance_id]

    def heartbeats(self) -> list[NodeHeartbeat]:
        return [e for e in self.events if isinstance(e, NodeHeartbeat)]

    def wait_for(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                seen = [(getattr(e, "instance_id", "-"), getattr(e, "state", e.TYPE),
                         getattr(e, "reason", None)) for e in self.events]
                log = "" if self._node is None else self._node.log_tail()
                raise AssertionError(f"timed out after {timeout} s waiting for {what}; "
                                     f"events so far: {seen}{log}")
            self.poll()

    def wait_state(self, instance_id: str, state: str, timeout: float = 60) -> InstanceStateEvent:
        self.wait_for(lambda: any(e.state == state for e in self.states(instance_id)),
                      timeout, f"{instance_id} -> {state}")
        return next(e for e in self.states(instance_id) if e.state == state)


STANDIN_HELPER = ("python3", "-c", "import signal; signal.pause()")
_STANDIN_BIND = """
import json, socket, sys, time
settings = json.loads(sys.stdin.readline())["bind"]
instance = settings[sys.argv[1]]
port = int(settings[sys.argv[2]].rsplit(":", 1)[1])
print(json.dumps({"bound": instance}), flush=True)
while True:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        break
    except OSError:
        time.sleep(0.05)
print(json.dumps({"ready": instance}), flush=True)
time.sleep(10 ** 9)
"""
STANDIN_LISTENER = ("python3", "-c", _STANDIN_BIND, pod.ENV_INSTANCE_ID, pod.ENV_AUTH_UPSTREAM)
"""The listener stand-in takes a bind (protocol.sandbox) and says ``ready`` once the tool's port
accepts, as the daemon waits for."""


@contextlib.contextmanager
def pods_s3(client: Any, network: str, port: int = 0) -> Iterator[tuple[Any, str]]:
    """moto's S3 on the pods bridge's gateway, where the pods reach it as
    ``host.docker.internal`` (a test engine has no egress policy closing it): (a boto3 client
    on the host, the endpoint as the pods see it)."""
    gateway = ensure_pods_network(client, network)
    server = ThreadedMotoServer(ip_address=gateway, port=port, verbose=False)
    server.start()
    try:
        host, bound = server.get_host_and_port()
        s3 = boto3.client("s3", endpoint_url=f"http://{host}:{bound}", region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
        yield s3, f"http://host.docker.internal:{bound}"
    finally:
        server.stop()


def helper_commands_for(client: Any, helpers_image: str) -> dict[str, list[str]]:
    """The real helpers where the image has them; a stand-in that stays up (and, for the
    listener, takes the bind and says when the tool answers) for the others.

    The daemon calls a pod running once the listener says the tool answers, and it
    reports a helper that exits, so an absent module would fail every launch. With every
    helper present this returns {} (the daemon's defaults).
    """
    roles = ("listener", "storage")
    missing = missing_modules(client, helpers_image, [f"helpers.{role}" for role in roles])
    return {role: list(STANDIN_LISTENER if role == "listener" else STANDIN_HELPER)
            for role in roles if f"helpers.{role}" in missing}


def node_env(client: Any, *, pods_network: str, labels: dict[str, str], helpers_image: str,
             **extra: str) -> dict[str, str]:
    """``DIT4C_NODE_*`` settings for a test node: its own pods network (made here) and labels,
    the helpers of ``helpers_image`` (:func:`helper_commands_for`), fast timers; ``extra``
    added as is."""
    ensure_pods_network(client, pods_network, labels)
    helper_commands = helper_commands_for(client, helpers_image)
    return {"DIT4C_NODE_PODS_NETWORK": pods_network,
            "DIT4C_NODE_LABELS": ",".join(f"{k}={v}" for k, v in labels.items()),
            "DIT4C_NODE_HEARTBEAT_SECONDS": "2",
            "DIT4C_NODE_RECONCILE_SECONDS": "2",
            "DIT4C_NODE_LAUNCH_TIMEOUT_SECONDS": "60",
            "DIT4C_NODE_HELPER_COMMANDS": json.dumps(helper_commands), **extra}


def sample_start(instance_id: str, image: str, *, port: int = 8080, cpu: float = 0.5,
                 memory_mb: int = 128, **fields: Any) -> StartInstance:
    """A start_instance as the control plane would send it, with recognisable secrets."""
    return StartInstance(
        instance_id=instance_id, image=image, port=port, cpu=cpu, memory_mb=memory_mb,
        hostname=f"{instance_id}.localhost", url=f"http://{instance_id}.localhost:8080",
        tunnel_token=f"tunnel-secret-{uuid.uuid4().hex}",
        router_urls=["ws://host.docker.internal:9/.dit4c/tunnel"],
        oauth=OAuthClient(client_id=f"client-{instance_id}",
                          client_secret=f"oauth-secret-{uuid.uuid4().hex}",
                          authorize_url="http://localhost:8000/oauth/authorize",
                          token_url="http://host.docker.internal:9/oauth/token",
                          jwks_url="http://host.docker.internal:9/.well-known/jwks.json"),
        **fields)


class NodeProcess:
    """``python -m node_daemon`` as a real process, joined to a :class:`ControlPlane`.

    Output goes to ``<data_dir>.log``; ``env`` adds ``DIT4C_NODE_*`` settings (and
    ``DOCKER_HOST`` for a node on another engine); it joins ``cluster_id`` (default: the
    portal's test cluster).
    """

    def __init__(self, portal: ControlPlane, data_dir: Path, env: dict[str, str],
                 cpu: float = 4, memory_mb: int = 4096, *,
                 cluster_id: str | None = None) -> None:
        self.portal = portal
        self.cluster_id = cluster_id or portal.cluster_id
        self.data_dir = data_dir
        self.env = {**os.environ, "DIT4C_NODE_METRICS_LISTEN": "127.0.0.1:0", **env}
        self.log_path = data_dir.with_name(data_dir.name + ".log")
        self.cpu, self.memory_mb = cpu, memory_mb
        self.node_id = ""
        self.process: subprocess.Popen[bytes] | None = None

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "node_daemon", *args, "--data-dir", str(self.data_dir)]

    def join(self) -> str:
        done = subprocess.run(
            self.argv("join", "--portal", self.portal.url, "--token",
                       self.portal.new_join_token(self.cluster_id), "--cpu", str(self.cpu),
                       "--memory-mb", str(self.memory_mb), "--name", self.data_dir.name),
            env=self.env, capture_output=True, text=True, timeout=60, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"join failed: {done.stderr}")
        self.node_id = json.loads((self.data_dir / "node.json").read_text())["node_id"]
        self.portal.enrolled(self.node_id)
        return self.node_id

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(self.argv("run"), env=self.env, stdout=log,
                                        stderr=subprocess.STDOUT)
        log.close()

    def signal(self, sig: int) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def wait(self, timeout: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    @contextlib.contextmanager
    def running(self) -> Iterator[NodeProcess]:
        """Joined and started; killed on leaving."""
        self.join()
        self.start()
        try:
            yield self
        finally:
            self.stop()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, chars: int = 4000) -> str:
        return f"\n--- node log ---\n{self.log_text()[-chars:]}"

    @contextlib.contextmanager
    def explaining(self, what: str = "") -> Iterator[None]:
        """An AssertionError raised inside gets ``what`` and the tail of this node's log."""
        try:
            yield
        except AssertionError as exc:
            raise AssertionError(f"{what}{exc}{self.log_tail()}") from None

    def send(self, message: Message) -> None:
        self.portal.send(self.node_id, message)
