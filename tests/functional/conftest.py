"""Control-plane fixtures (``cp_*``): moto with the tables and queues of ``template.yaml``.

:func:`cp_provision` creates the template's resources in the active moto mock with the local
stack's own provisioner (``infra.local.provision``), so the control plane's tests run on exactly
what ``make run`` and SAM create (``cp_env``: the resolved ``Globals`` environment).

Least privilege is checked in every test here: the control plane's AWS clients (``cp_clients``)
hold each call made while a handler runs to the policies ``template.yaml`` gives that handler's
function (:mod:`tests.support.iam_clients`), and a test in which a call was refused fails, naming
the function, the IAM action and the resource.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest
from chalice.test import Client
from moto import mock_aws

from control_plane import services
from control_plane.app import app, on_event
from control_plane.aws import Clients
from control_plane.bodies import NewImage
from control_plane.bootstrap import LocalDefaults, ensure_local_defaults
from control_plane.config import Config
from control_plane.services import Services
from infra.local.aws import AwsEndpoint
from infra.local.provision import Provisioner, Stack
from infra.local.template import Template
from protocol.messages import Message, decode
from protocol.tokens import SigningKey
from tests.ports import free_port
from tests.support.events import signed_event
from tests.support.iam_clients import ClientGate, attribute_calls, fail_on, take_denials
from tests.support.registry import RegistryServer

REGION = "us-east-1"
ACCOUNT = "123456789012"


@functools.cache
def cp_boto_session() -> Any:
    """One boto3 session for every test: each new one re-parses botocore's JSON models (~0.5 s)."""
    return boto3.session.Session(region_name=REGION)


class _SharedEndpoint(AwsEndpoint):
    def client(self, service: str) -> Any:
        return cp_boto_session().client(service)


def cp_endpoint() -> AwsEndpoint:
    """The active moto mock, as the provisioner reaches an endpoint."""
    return _SharedEndpoint(None)


def cp_parameters(parameters: dict[str, Any]) -> dict[str, str | list[str]]:
    """Template parameter values as the provisioner takes them."""
    return {k: v if isinstance(v, list) else str(v) for k, v in parameters.items()}


def cp_provision(stack: str, parameters: dict[str, Any]) -> Stack:
    """Create the template's resources in the active moto mock."""
    return Provisioner(cp_endpoint(), stack).provision(Template.load(),
                                                        cp_parameters(parameters))


# Every handler of the app runs as its function of template.yaml (before any test runs it).
attribute_calls(app, Template.load())


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Any:
    """A test (or its fixtures' set-up) in which a function made a call its policies refuse
    fails; in its fixtures' teardown, the teardown does."""
    try:
        return (yield)
    finally:
        fail_on(take_denials())


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Any:
    try:
        return (yield)
    finally:
        fail_on(take_denials())


def cp_gated_clients(stack: Stack, config: Config) -> Clients:
    """The control plane's clients over ``stack``, every call held to the calling function's
    policies (see the module docstring)."""
    return Clients(config, session=cp_boto_session(), before_call=ClientGate.for_stack(stack))


CP_PARAMETERS = {
    "PortalUrl": "http://portal.test:8000",
    "RouterDomain": "apps.test",
    "RouterScheme": "http",
    "RouterTunnelUrls": ["ws://router.test:8080/.dit4c/tunnel"],
    "MaxRunningInstancesPerUser": 3,
}


@contextlib.contextmanager
def cp_module_stack(prefix: str) -> Iterator[Stack]:
    """For module-scoped fixtures (monkeypatch is per test): moto holding the template's
    resources; the environment is restored afterwards."""
    saved = dict(os.environ)
    os.environ.update({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": REGION})
    try:
        with mock_aws():
            yield cp_provision(f"{prefix}{uuid.uuid4().hex[:8]}", CP_PARAMETERS)
    finally:
        os.environ.clear()
        os.environ.update(saved)


@contextlib.contextmanager
def cp_module_services(prefix: str, **config: Any) -> Iterator[Services]:
    """:func:`cp_module_stack` and the services over it (``config``: :class:`Config` fields to
    change), installed as ``services.current()``."""
    with cp_module_stack(prefix) as stack:
        settings = dataclasses.replace(Config.from_env(stack.environment), **config)
        svc = Services.build(settings, cp_gated_clients(stack, settings))
        services.use(svc)
        try:
            yield svc
        finally:
            services.use(None)


@pytest.fixture
def cp_aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": REGION}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    with mock_aws():
        yield


@pytest.fixture
def cp_stack(cp_aws: None) -> Stack:
    return cp_provision(f"cp{uuid.uuid4().hex[:8]}", CP_PARAMETERS)


@pytest.fixture
def cp_env(cp_stack: Stack) -> dict[str, str]:
    env = dict(cp_stack.environment)
    env["DIT4C_ROUTER_PUBLIC_PORT"] = "8080"
    env["DIT4C_POD_PORTAL_URL"] = "http://host.docker.internal:8000"
    return env


@pytest.fixture
def cp_clients(cp_stack: Stack) -> Callable[[Config], Clients]:
    """``cp_clients(config)``: the control plane's clients over this test's stack, gated."""
    return functools.partial(cp_gated_clients, cp_stack)


@pytest.fixture
def cp_services(cp_env: dict[str, str], cp_clients: Callable[[Config], Clients],
                monkeypatch: pytest.MonkeyPatch) -> Iterator[Services]:
    for name, value in cp_env.items():
        monkeypatch.setenv(name, value)
    config = Config.from_env(cp_env)
    svc = Services.build(config, cp_clients(config))
    services.use(svc)
    yield svc
    services.use(None)


ADMIN_PASSWORD = "admin-password-1"
USER_PASSWORD = "user-password-1"


class CPClient:
    """The Chalice test client with a cookie jar and the CSRF header, like a browser's JS.

    ``cookie`` is the session cookie (``name=value``, or None); ``device`` the device cookie a
    successful login leaves (the login throttle's known browser)."""

    def __init__(self, client: Client, address: str = "127.0.0.1") -> None:
        self.client = client
        self.cookie: str | None = None
        self.device: str | None = None
        self.csrf: str | None = None

    def request(self, method: str, path: str, body: Any = None, *,
                headers: dict[str, str] | None = None, raw: bytes | None = None,
                csrf: bool = True) -> Any:
        sent = {"content-type": "application/json"}
        jar = [c for c in (self.cookie, self.device) if c]
        if jar:
            sent["cookie"] = "; ".join(jar)
        if csrf and self.csrf:
            sent["x-csrf-token"] = self.csrf
        sent.update(headers or {})
        data = raw if raw is not None else (b"" if body is None else json.dumps(body).encode())
        response = self.client.http.request(method, path, headers=sent, body=data)
        lower = {k.lower(): v for k, v in response.headers.items()}
        cookies: str | list[str] = lower.get("set-cookie") or []
        for cookie in [cookies] if isinstance(cookies, str) else cookies:
            value = cookie.split(";", 1)[0]
            if value.startswith("dit4c_session="):
                self.cookie = value if value.split("=", 1)[1] else None
            elif value.startswith("dit4c_device="):
                self.device = value if value.split("=", 1)[1] else None
        response.json = json.loads(response.body) if response.body else None  # type: ignore[attr-defined]
        return response

    def get(self, path: str, **kw: Any) -> Any:
        return self.request("GET", path, **kw)

    def post(self, path: str, body: Any = None, **kw: Any) -> Any:
        return self.request("POST", path, body, **kw)

    def delete(self, path: str, **kw: Any) -> Any:
        return self.request("DELETE", path, **kw)

    def login(self, username: str, password: str) -> Any:
        response = self.post("/api/login", {"username": username, "password": password})
        if response.status_code == 200:
            self.csrf = response.json["csrf_token"]
        return response


@pytest.fixture
def cp_chalice(cp_services: Services) -> Iterator[Client]:
    with Client(app) as client:
        yield client


@pytest.fixture
def cp_client(cp_chalice: Client) -> Callable[[], CPClient]:
    """A factory: each call is a fresh browser (own cookies)."""
    return lambda: CPClient(cp_chalice)


@pytest.fixture
def cp_admin(cp_services: Services, cp_client: Callable[[], CPClient]) -> CPClient:
    cp_services.accounts.set_password("admin", ADMIN_PASSWORD, admin=True)
    client = cp_client()
    assert client.login("admin", ADMIN_PASSWORD).status_code == 200
    return client


@pytest.fixture
def cp_user(cp_admin: CPClient, cp_client: Callable[[], CPClient]) -> Callable[[str], CPClient]:
    """``cp_user("alice")``: a logged-in browser of a fresh local account."""

    def make(username: str) -> CPClient:
        assert cp_admin.post("/api/users", {"username": username,
                                            "password": USER_PASSWORD}).status_code == 201
        client = cp_client()
        assert client.login(username, USER_PASSWORD).status_code == 200
        return client

    return make


__all__ = ["ADMIN_PASSWORD", "CATALOG", "CP_PARAMETERS", "NODE_KEYS", "USER_PASSWORD",
           "CPClient", "cp_endpoint", "cp_enroll", "cp_event", "cp_gated_clients",
           "cp_image_id", "cp_messages", "cp_module_services", "cp_module_stack",
           "cp_parameters", "cp_provision", "cp_reap", "cp_revocations", "with_registry"]


@pytest.fixture
def cp_registry_port() -> int:
    return free_port()


def with_registry(env: dict[str, str], port: int) -> dict[str, str]:
    """``env`` with an image server on loopback port ``port`` (start it with
    ``cp_image_server``). A module overrides ``cp_env`` with it::

        @pytest.fixture
        def cp_env(cp_env, cp_registry_port):
            return with_registry(cp_env, cp_registry_port)
    """
    return {**env, "DIT4C_REGISTRY": f"127.0.0.1:{port}",
            "DIT4C_REGISTRY_URL": f"http://127.0.0.1:{port}",
            "DIT4C_EXPORT_URL": "http://export.test:5002"}


@pytest.fixture
def cp_image_server(cp_services: Services, cp_registry_port: int, tmp_path: Any
                    ) -> Iterator[Any]:
    """Debian's docker-registry trusting this control plane's tokens, at ``DIT4C_REGISTRY``."""
    server = RegistryServer(tmp_path / "registry", cp_services.keys,
                            issuer=cp_services.config.portal_url, port=cp_registry_port).start()
    yield server
    server.stop()


# -- instances, nodes and events -------------------------------------------------------------

CATALOG = [NewImage(name="Busybox", image="dit4c/test-tool:busybox", port=8080, cpu=1,
                    memory_mb=512, tags=["demo"])]


@pytest.fixture
def local(cp_services: Services) -> LocalDefaults:
    """The local stack's defaults: admin, the default cluster, the test tool, a join token."""
    return ensure_local_defaults("admin-password-1", CATALOG, cp_services)


NODE_KEYS: dict[str, SigningKey] = {}
"""Each enrolled node's key, by node id: :func:`cp_event` signs its events with it."""


def cp_enroll(client: CPClient, join_token: str, name: str) -> dict[str, Any]:
    """Enrol a node of 2 CPUs and 1 GB (the enrolment's answer: node_id, queue_url, ...)."""
    key = SigningKey.generate()
    r = client.post("/api/nodes/enroll", {
        "join_token": join_token, "public_jwk": key.public_jwk(), "name": name, "cpu": 2,
        "memory_mb": 1024})
    assert r.status_code == 201, r.body
    enrolled: dict[str, Any] = r.json
    NODE_KEYS[enrolled["node_id"]] = key
    return enrolled


@pytest.fixture
def node(local: LocalDefaults, cp_client: Callable[[], CPClient]) -> dict[str, Any]:
    """An enrolled node."""
    return cp_enroll(cp_client(), local.join_token, "node-1")


def cp_image_id(client: CPClient) -> str:
    """The id of the test tool in the catalog."""
    return str(next(i["id"] for i in client.get("/api/images").json["images"]
                    if i["image"] == "dit4c/test-tool:busybox"))


def cp_messages(queue_url: str) -> list[Any]:
    """Every command on ``queue_url``, taken off it."""
    sqs = boto3.client("sqs", region_name="us-east-1")
    out: list[object] = []
    while True:
        got = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10).get("Messages",
                                                                                  [])
        if not got:
            return out
        for m in got:
            out.append(decode(m["Body"]))
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=m["ReceiptHandle"])


def cp_event(cp_chalice: Client, *messages: Message) -> Any:
    """Hand ``messages`` to the events consumer as one SQS batch, each signed by its node."""
    event = signed_event(NODE_KEYS, *messages)
    result = cp_chalice.lambda_.invoke("on_event", event).payload
    assert on_event is not None
    return result


def cp_reap(cp_chalice: Client) -> Any:
    event = cp_chalice.events.generate_cw_event(
        source="aws.events", detail_type="Scheduled Event", detail={}, resources=[])
    return cp_chalice.lambda_.invoke("reap", event)


def cp_revocations(cp_env: dict[str, str]) -> list[Any]:
    """The revocations the routers' queue received (left on it)."""
    sqs = boto3.client("sqs", region_name="us-east-1")
    url = sqs.get_queue_url(QueueName=cp_env["DIT4C_REVOCATIONS_TOPIC_ARN"].rsplit(":", 1)[1]
                            .replace("RevocationsTopic", "RouterRevocationsQueue"))["QueueUrl"]
    return [decode(m) for m in
            (x["Body"] for x in sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)
             .get("Messages", []))]

