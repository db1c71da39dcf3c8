"""Control-plane fixtures (``cp_*``): moto with the tables and queues of ``template.yaml``.

:func:`cp_provision` creates the template's resources in the active moto mock with the local
stack's own provisioner (``infra.local.provision``) and returns the resolved ``Globals``
environment, so the control plane's tests run on exactly what ``make run`` and SAM create.
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
from control_plane.app import app
from control_plane.aws import Clients
from control_plane.config import Config
from control_plane.services import Services
from infra.local.aws import AwsEndpoint
from infra.local.provision import Provisioner
from infra.local.template import Template

REGION = "us-east-1"
ACCOUNT = "123456789012"


@functools.cache
def cp_boto_session() -> Any:
    """One boto3 session for every test: each new one re-parses botocore's JSON models (~0.5 s)."""
    return boto3.session.Session(region_name=REGION)


class _SharedEndpoint(AwsEndpoint):
    def client(self, service: str) -> Any:
        return cp_boto_session().client(service)


def cp_provision(stack: str, parameters: dict[str, Any]) -> dict[str, str]:
    """Create the template's resources in the active moto mock; return the Globals env."""
    made = Provisioner(_SharedEndpoint(None), stack).provision(Template.load(), {
        k: v if isinstance(v, list) else str(v) for k, v in parameters.items()})
    return dict(made.environment)


CP_PARAMETERS = {
    "PortalUrl": "http://portal.test:8000",
    "RouterDomain": "apps.test",
    "RouterScheme": "http",
    "RouterTunnelUrls": ["ws://router.test:8080/.dit4c/tunnel"],
    "MaxRunningInstancesPerUser": 3,
}


@contextlib.contextmanager
def cp_module_services(prefix: str, **config: Any) -> Iterator[Services]:
    """For module-scoped fixtures (monkeypatch is per test): moto, the template's resources and
    the services over them (``config``: :class:`Config` fields to change), installed as
    ``services.current()``; the environment is restored afterwards."""
    saved = dict(os.environ)
    os.environ.update({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": REGION})
    try:
        with mock_aws():
            env = cp_provision(f"{prefix}{uuid.uuid4().hex[:8]}", CP_PARAMETERS)
            settings = dataclasses.replace(Config.from_env(env), **config)
            svc = Services.build(settings, Clients(settings, session=cp_boto_session()))
            services.use(svc)
            try:
                yield svc
            finally:
                services.use(None)
    finally:
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture
def cp_aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": REGION}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    with mock_aws():
        yield


@pytest.fixture
def cp_env(cp_aws: None) -> dict[str, str]:
    env = cp_provision(f"cp{uuid.uuid4().hex[:8]}", CP_PARAMETERS)
    env["DIT4C_ROUTER_PUBLIC_PORT"] = "8080"
    env["DIT4C_POD_PORTAL_URL"] = "http://host.docker.internal:8000"
    return env


@pytest.fixture
def cp_services(cp_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[Services]:
    for name, value in cp_env.items():
        monkeypatch.setenv(name, value)
    config = Config.from_env(cp_env)
    svc = Services.build(config, Clients(config, session=cp_boto_session()))
    services.use(svc)
    yield svc
    services.use(None)


ADMIN_PASSWORD = "admin-password-1"
USER_PASSWORD = "user-password-1"


class CPClient:
    """The Chalice test client with a cookie jar and the CSRF header, like a browser's JS."""

    def __init__(self, client: Client, address: str = "127.0.0.1") -> None:
        self.client = client
        self.cookie: str | None = None
        self.csrf: str | None = None

    def request(self, method: str, path: str, body: Any = None, *,
                headers: dict[str, str] | None = None, raw: bytes | None = None,
                csrf: bool = True) -> Any:
        sent = {"content-type": "application/json"}
        if self.cookie:
            sent["cookie"] = self.cookie
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


__all__ = ["ADMIN_PASSWORD", "USER_PASSWORD", "CPClient", "cp_module_services", "cp_provision"]
