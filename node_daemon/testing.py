"""A stand-in control plane for the node daemon's tests and benchmark.

Until the real control plane serves the node endpoints, the node daemon is exercised against:

- :class:`MotoServer` — moto in server mode on 127.0.0.1 (port 0): real SQS over HTTP;
- :class:`FakePortal` — a real aiohttp server on loopback implementing exactly the two node
  endpoints of docs/contracts.md: one-time join tokens, the node's JWT verified with
  :mod:`protocol.tokens` (replayed ``jti`` refused), and STS credentials from moto;
- :class:`EventLog` — reads the events queue the way the control plane would.

Both servers run on their own threads, so synchronous tests and the benchmark can use them;
:func:`fake_control_plane` starts and stops the pair. The node tests share the rest too:
:func:`node_env` (a test node's settings and pods network), :class:`NodeProcess` (the daemon as
a process), :func:`sample_start`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
from aiohttp import web
from moto.server import ThreadedMotoServer

from protocol import pod
from protocol.errors import MessageError, TokenError
from protocol.ids import new_id
from protocol.messages import (
    InstanceStateEvent,
    Message,
    NodeHeartbeat,
    OAuthClient,
    StartInstance,
    decode,
)
from protocol.tokens import KeySet, load_public_jwk, thumbprint, verify_node

REGION = "us-east-1"


class MotoServer:
    """moto's server mode on 127.0.0.1, any free port; ``endpoint`` is its URL.

    :meth:`stop` then :meth:`start` is an outage: the same port comes back with the same queues
    (moto keeps its state in the process, not in the server).
    """

    def __init__(self) -> None:
        # One log line per request otherwise, on stderr.
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        self._port = 0
        self.start()

    def start(self) -> None:
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self._port,
                                          verbose=False)
        self._server.start()
        host, self._port = self._server.get_host_and_port()
        self.endpoint = f"http://{host}:{self._port}"

    def client(self, service: str) -> Any:
        return boto3.client(service, region_name=REGION, endpoint_url=self.endpoint,
                            aws_access_key_id="test", aws_secret_access_key="test")  # noqa: S106

    def stop(self) -> None:
        server = self._server._server  # stop() alone leaves the socket listening
        self._server.stop()
        if server is not None:
            server.server_close()  # refuse connections, as a host that went away would


@contextlib.contextmanager
def fake_control_plane(**options: Any) -> Iterator[FakePortal]:
    """A started :class:`FakePortal` (``options`` as its constructor's) on a moto server of its
    own (``portal.moto``); both are stopped on leaving."""
    moto = MotoServer()
    try:
        portal = FakePortal(moto, **options)
        portal.start()
        try:
            yield portal
        finally:
            portal.stop()
    finally:
        moto.stop()


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


def _enrolment_refusal(body: Any, join_tokens: set[str]) -> web.Response | None:
    if not isinstance(body, dict):
        return _error(400, "bad_request", "body must be an object")
    token = body.get("join_token")
    if not isinstance(token, str) or token not in join_tokens:
        return _error(403, "bad_join_token", "join token unknown, used or expired")
    name, cpu, memory = body.get("name"), body.get("cpu"), body.get("memory_mb")
    if not isinstance(name, str) or not isinstance(cpu, int | float) or \
            not isinstance(memory, int) or cpu <= 0 or memory <= 0:
        return _error(400, "bad_request", "name, cpu and memory_mb are required")
    try:
        load_public_jwk(body.get("public_jwk"))  # type: ignore[arg-type]
    except (TokenError, AttributeError) as exc:
        return _error(400, "bad_jwk", str(exc))
    return None


class FakePortal:
    """The control plane's node endpoints over moto, at ``url`` once :meth:`start` returned.

    ``credential_lifetime`` sets the ``expiration`` it hands out (the real control plane asks
    STS for at least 15 minutes; tests use seconds to watch refreshes). ``visibility_timeout``
    is the node queues': how long a message received by a killed daemon stays hidden.
    ``available`` False makes every call answer 503, as an unreachable control plane would.
    """

    def __init__(self, moto: MotoServer, credential_lifetime: float = 3600,
                 visibility_timeout: int = 30) -> None:
        self.moto = moto
        self.sqs = moto.client("sqs")
        self.events_queue_url: str = self.sqs.create_queue(
            QueueName=f"dit4c-events-{uuid.uuid4().hex[:8]}")["QueueUrl"]
        self.credential_lifetime = credential_lifetime
        self.visibility_timeout = visibility_timeout
        self.available = True
        self.cluster_id = new_id()
        self.join_tokens: set[str] = set()
        self.nodes: dict[str, dict[str, Any]] = {}
        self.credential_requests = 0
        self._seen_jti: set[str] = set()
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self.url = ""

    def new_join_token(self) -> str:
        token = uuid.uuid4().hex
        self.join_tokens.add(token)
        return token

    def queue_url(self, node_id: str) -> str:
        return str(self.nodes[node_id]["queue_url"])

    # -- the two endpoints ---------------------------------------------------------------

    async def _enroll(self, request: web.Request) -> web.Response:
        if not self.available:
            return _error(503, "unavailable", "control plane unavailable")
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "bad_json", "body is not JSON")
        refusal = _enrolment_refusal(body, self.join_tokens)
        if refusal is not None:
            return refusal
        jwk = body["public_jwk"]
        key = load_public_jwk(jwk)
        kid = str(jwk.get("kid") or thumbprint(jwk))
        self.join_tokens.discard(body["join_token"])
        node_id = new_id()
        queue_url = await asyncio.to_thread(
            lambda: self.sqs.create_queue(
                QueueName=f"dit4c-{node_id}",
                Attributes={"VisibilityTimeout": str(self.visibility_timeout)})["QueueUrl"])
        self.nodes[node_id] = {"keys": KeySet({kid: key}), "queue_url": queue_url,
                               "name": body["name"], "cpu": body["cpu"],
                               "memory_mb": body["memory_mb"]}
        return web.json_response({"node_id": node_id, "cluster_id": self.cluster_id,
                                  "queue_url": queue_url,
                                  "events_queue_url": self.events_queue_url}, status=201)

    async def _credentials(self, request: web.Request) -> web.Response:
        self.credential_requests += 1
        if not self.available:
            return _error(503, "unavailable", "control plane unavailable")
        node_id = request.match_info["node_id"]
        node = self.nodes.get(node_id)
        header = request.headers.get("Authorization", "")
        if node is None or not header.startswith("Bearer "):
            return _error(401, "unauthorized", "unknown node or no bearer token")
        try:
            claims = verify_node(header.removeprefix("Bearer "), node["keys"], node_id=node_id)
        except TokenError as exc:
            return _error(401, "unauthorized", str(exc))
        if claims["jti"] in self._seen_jti:
            return _error(401, "unauthorized", "token replayed")
        self._seen_jti.add(claims["jti"])
        sts = self.moto.client("sts")
        creds = (await asyncio.to_thread(sts.get_session_token, DurationSeconds=900))[
            "Credentials"]
        expiration = datetime.now(UTC) + timedelta(seconds=self.credential_lifetime)
        return web.json_response({
            "access_key_id": creds["AccessKeyId"],
            "secret_access_key": creds["SecretAccessKey"],
            "session_token": creds["SessionToken"],
            "expiration": expiration.isoformat().replace("+00:00", "Z"),
            "region": REGION, "queue_url": node["queue_url"],
            "events_queue_url": self.events_queue_url, "endpoint_url": self.moto.endpoint})

    # -- running -------------------------------------------------------------------------

    def start(self) -> str:
        app = web.Application()
        app.router.add_post("/api/nodes/enroll", self._enroll)
        app.router.add_post("/api/nodes/{node_id}/credentials", self._credentials)
        ready = threading.Event()

        async def serve() -> None:
            self._runner = web.AppRunner(app)
            await self._runner.setup()
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            await site.start()
            port = self._runner.addresses[0][1]
            self.url = f"http://127.0.0.1:{port}"
            ready.set()

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(serve())
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="fake-portal", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("fake portal did not start")
        return self.url

    def stop(self) -> None:
        async def cleanup() -> None:
            if self._runner is not None:
                await self._runner.cleanup()

        asyncio.run_coroutine_threadsafe(cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    # -- the control plane's side of the queues ------------------------------------------

    def send(self, node_id: str, message: Message) -> None:
        self.sqs.send_message(QueueUrl=self.queue_url(node_id), MessageBody=message.encode())


class EventLog:
    """Everything the node sent to the events queue, read as the control plane would.

    With ``node``, a wait that times out shows the tail of that node's log too.
    """

    def __init__(self, portal: FakePortal, node: NodeProcess | None = None) -> None:
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
STANDIN_AUTH = ("python3", "-m", "http.server", "--bind", "127.0.0.1", str(pod.AUTH_PORT))
"""The auth stand-in answers HTTP on AUTH_PORT, which the daemon's readiness probe waits for."""


def helper_commands_for(client: Any, helpers_image: str) -> dict[str, list[str]]:
    """The real helpers where the image has them; a stand-in that stays up (and, for auth,
    answers HTTP on its port) for the others.

    The daemon calls a pod running once the tool and the auth helper answer HTTP, and it
    reports a helper that exits, so an absent module would fail every launch. With every
    helper present this returns {} (the daemon's defaults).
    """
    from node_daemon.pods import missing_modules

    roles = ("listener", "auth", "storage")
    missing = missing_modules(client, helpers_image, [f"helpers.{role}" for role in roles])
    return {role: list(STANDIN_AUTH if role == "auth" else STANDIN_HELPER)
            for role in roles if f"helpers.{role}" in missing}


def node_env(client: Any, *, pods_network: str, labels: dict[str, str], helpers_image: str,
             **extra: str) -> dict[str, str]:
    """``DIT4C_NODE_*`` settings for a test node: its own pods network (made here) and labels,
    the helpers of ``helpers_image`` (:func:`helper_commands_for`), fast timers; ``extra``
    added as is."""
    from node_daemon.network import ensure_pods_network

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
                          token_url="http://host.docker.internal:9/oauth/token",  # noqa: S106
                          jwks_url="http://host.docker.internal:9/.well-known/jwks.json"),
        **fields)


class NodeProcess:
    """``python -m node_daemon`` as a real process, joined to a :class:`FakePortal`.

    Output goes to ``<data_dir>.log``; ``env`` adds ``DIT4C_NODE_*`` settings.
    """

    def __init__(self, portal: FakePortal, data_dir: Path, env: dict[str, str],
                 cpu: float = 4, memory_mb: int = 4096) -> None:
        self.portal = portal
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
                       self.portal.new_join_token(), "--cpu", str(self.cpu),
                       "--memory-mb", str(self.memory_mb), "--name", self.data_dir.name),
            env=self.env, capture_output=True, text=True, timeout=60, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"join failed: {done.stderr}")
        self.node_id = json.loads((self.data_dir / "node.json").read_text())["node_id"]
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
