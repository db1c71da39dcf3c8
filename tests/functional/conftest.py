"""Control-plane fixtures (``cp_*``): moto with the tables and queues of ``template.yaml``.

:func:`cp_provision` reads ``template.yaml`` (CloudFormation tags included) and creates its
DynamoDB tables, SQS queues (with their redrive policies) and SNS topic/subscriptions in the
active moto mock, then resolves the ``Globals`` environment against what it made. It is a stop-gap
until the local stack's own template loader lands on main; then these fixtures use that one.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from chalice.test import Client
from moto import mock_aws

from control_plane import services
from control_plane.config import Config
from control_plane.services import Services

TEMPLATE = Path(__file__).resolve().parents[2] / "template.yaml"
REGION = "us-east-1"
ACCOUNT = "123456789012"


class _Tag:
    def __init__(self, tag: str, value: Any) -> None:
        self.tag = tag
        self.value = value


class _Loader(yaml.SafeLoader):
    pass


def _construct(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> _Tag:
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    return _Tag(suffix, value)


_Loader.add_multi_constructor("!", _construct)


def cp_load_template(path: Path = TEMPLATE) -> dict[str, Any]:
    with path.open() as f:
        document: dict[str, Any] = yaml.load(f, Loader=_Loader)  # noqa: S506 - SafeLoader
    return document


def cp_provision(stack: str, parameters: dict[str, Any]) -> dict[str, str]:
    """Create the template's tables, queues and topics in moto; return the Globals env."""
    template = cp_load_template()
    resources: dict[str, Any] = template["Resources"]
    ddb = boto3.client("dynamodb", region_name=REGION)
    sqs = boto3.client("sqs", region_name=REGION)
    sns = boto3.client("sns", region_name=REGION)
    refs: dict[str, str] = {}
    attrs: dict[str, dict[str, str]] = {}

    def resolve(value: Any) -> Any:  # noqa: PLR0911 - one return per tag
        if isinstance(value, _Tag):
            if value.tag == "Ref":
                name = value.value
                if name in parameters:
                    return parameters[name]
                if name == "AWS::StackName":
                    return stack
                return refs[name]
            if value.tag == "GetAtt":
                resource, attr = value.value.split(".", 1) if isinstance(
                    value.value, str) else value.value
                return attrs[resource][attr]
            if value.tag == "Sub":
                text = value.value
                for key, sub in {"AWS::StackName": stack, "AWS::Region": REGION,
                                 "AWS::AccountId": ACCOUNT, "AWS::Partition": "aws"}.items():
                    text = text.replace("${" + key + "}", sub)
                return text
            if value.tag == "Join":
                sep, items = value.value
                items = resolve(items)
                return sep.join(resolve(i) for i in items)
            raise ValueError(f"unsupported tag !{value.tag}")
        if isinstance(value, dict):
            return {k: resolve(v) for k, v in value.items()}
        if isinstance(value, list):
            return [resolve(v) for v in value]
        return value

    # Dead-letter queues first: queues name their DLQ's ARN.
    order = sorted(resources, key=lambda n: "RedrivePolicy" in json.dumps(
        resources[n].get("Properties", {}), default=str))
    for name in order:
        resource = resources[name]
        kind = resource["Type"]
        props = resource.get("Properties", {})
        if kind == "AWS::DynamoDB::Table":
            table = f"{stack}-{name}"
            kwargs: dict[str, Any] = {
                "TableName": table, "BillingMode": "PAY_PER_REQUEST",
                "AttributeDefinitions": props["AttributeDefinitions"],
                "KeySchema": props["KeySchema"]}
            if props.get("GlobalSecondaryIndexes"):
                kwargs["GlobalSecondaryIndexes"] = props["GlobalSecondaryIndexes"]
            ddb.create_table(**kwargs)
            refs[name] = table
        elif kind == "AWS::SQS::Queue":
            queue_attrs = {k: str(v) for k, v in props.items()
                           if k in ("VisibilityTimeout", "MessageRetentionPeriod")}
            if "RedrivePolicy" in props:
                queue_attrs["RedrivePolicy"] = json.dumps(resolve(props["RedrivePolicy"]))
            url = sqs.create_queue(QueueName=f"{stack}-{name}",
                                   Attributes=queue_attrs)["QueueUrl"]
            arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])[
                "Attributes"]["QueueArn"]
            refs[name] = url
            attrs[name] = {"Arn": arn, "QueueName": f"{stack}-{name}"}
        elif kind == "AWS::SNS::Topic":
            arn = sns.create_topic(Name=f"{stack}-{name}")["TopicArn"]
            refs[name] = arn
            attrs[name] = {"TopicName": f"{stack}-{name}"}
        elif kind == "AWS::IAM::Role":
            arn = f"arn:aws:iam::{ACCOUNT}:role/{stack}-{name}"
            refs[name] = f"{stack}-{name}"
            attrs[name] = {"Arn": arn}
    for resource in resources.values():
        if resource["Type"] == "AWS::SNS::Subscription":
            props = resolve(resource["Properties"])
            sns.subscribe(TopicArn=props["TopicArn"], Protocol=props["Protocol"],
                          Endpoint=props["Endpoint"],
                          Attributes={"RawMessageDelivery": str(
                              props.get("RawMessageDelivery", False)).lower()})
    for name, resource in resources.items():
        if resource["Type"] == "AWS::S3::Bucket":
            refs[name] = f"{stack}-{name}".lower()
    env = template["Globals"]["Function"]["Environment"]["Variables"]
    return {k: str(resolve(v)) for k, v in env.items()}


CP_PARAMETERS = {
    "PortalUrl": "http://portal.test:8000",
    "RouterDomain": "apps.test",
    "RouterScheme": "http",
    "RouterTunnelUrls": ["ws://router.test:8080/.dit4c/tunnel"],
    "MaxRunningInstancesPerUser": 3,
}


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
    svc = Services.build(Config.from_env(cp_env))
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
        cookie = lower.get("set-cookie")
        if cookie:
            value = cookie.split(";", 1)[0]
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
    from control_plane.app import app

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


__all__ = ["ADMIN_PASSWORD", "USER_PASSWORD", "CPClient", "cp_provision"]
_ = os
