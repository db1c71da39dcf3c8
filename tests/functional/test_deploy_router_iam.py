"""Least privilege, proven for the edge router: its identity (template.yaml's ``RouterRole``, as
EC2 hands it to the instance through ``RouterInstanceProfile``) may receive and delete on its own
revocations queue and nothing else.

A real router process (``python -m edge_router``) runs with the role's credentials against
moto's server behind :class:`tests.support.iam_gate.IamGate` (which authorises every call as IAM
would); a revocation published to the topic reaches it and is deleted. Then every grant of the
role must have been used, and the same credentials are refused everything else a router could
want: another router's queue, the events queue, the topic, the tables, the signing key, the
nodes' role. (Terraform's router role is the template's, statement by statement:
``tests/unit/test_terraform.py``.)
"""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import botocore.exceptions
import pytest

from infra.local.aws import ACCOUNT_ID, AwsEndpoint
from infra.local.moto_server import MotoServer
from infra.local.provision import Stack
from infra.local.template import Template
from protocol.messages import Revocation
from tests.support.deploy import PARAMETERS, REGION, provisioned
from tests.support.iam_gate import FunctionPolicies, IamGate, unused_grants
from tests.support.process import Process

pytestmark = pytest.mark.timeout(120)

ROLE = "RouterRole"


@dataclass
class RouterWorld:
    endpoint: AwsEndpoint
    stack: Stack
    gate: IamGate
    credentials: dict[str, str]

    def client(self, service: str) -> Any:
        """A client holding the router's credentials (gated)."""
        return boto3.session.Session(
            aws_access_key_id=self.credentials["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=self.credentials["AWS_SECRET_ACCESS_KEY"],
            aws_session_token=self.credentials["AWS_SESSION_TOKEN"], region_name=REGION,
        ).client(service, endpoint_url=self.endpoint.url)

    def ref(self, logical_id: str) -> str:
        return self.stack.resources[logical_id].ref


def router_policies() -> FunctionPolicies:
    """The router role's own policies as the template writes them."""
    properties = Template.load().properties(ROLE)
    return FunctionPolicies(function=ROLE, inline={
        p["PolicyName"]: p["PolicyDocument"] for p in properties["Policies"]}, managed=())


@pytest.fixture(scope="module")
def world() -> Iterator[RouterWorld]:
    gate = IamGate()
    with provisioned(f"rtr{uuid.uuid4().hex[:6]}", MotoServer(wrap=gate)) as (endpoint, stack):
        # The instance profile's role, assumed as EC2 does for the instance (the test's own
        # key, ungated); the session name is how the gate tells the router's calls apart.
        creds = endpoint.client("sts").assume_role(
            RoleArn=stack.resources[ROLE].attributes["Arn"],
            RoleSessionName=ROLE)["Credentials"]
        yield RouterWorld(endpoint, stack, gate, {
            "AWS_ACCESS_KEY_ID": creds["AccessKeyId"],
            "AWS_SECRET_ACCESS_KEY": creds["SecretAccessKey"],
            "AWS_SESSION_TOKEN": creds["SessionToken"]})


@pytest.fixture(scope="module")
def revoked(world: RouterWorld) -> RouterWorld:
    """A router process under the role, a revocation published, received and deleted."""
    queue = world.ref("RouterRevocationsQueue")
    router = Process([sys.executable, "-m", "edge_router"], env={
        **world.credentials, "AWS_DEFAULT_REGION": REGION, "AWS_REGION": REGION,
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
        "DIT4C_AWS_ENDPOINT_URL": str(world.endpoint.url),
        "DIT4C_ROUTER_DOMAIN": str(PARAMETERS["RouterDomain"]),
        "DIT4C_ROUTER_JWKS_URL": "http://127.0.0.1:9/.well-known/jwks.json",
        "DIT4C_ROUTER_LISTEN": "127.0.0.1:0",
        "DIT4C_ROUTER_REVOCATIONS_QUEUE_URL": queue})
    try:
        router.wait_for("edge router for", 20)
        hostname = f"abc123.{PARAMETERS['RouterDomain']}"
        world.endpoint.client("sns").publish(  # the control plane's part: not the router's
            TopicArn=world.ref("RevocationsTopic"),
            Message=Revocation(instance_id="abc123", hostname=hostname,
                               reason="iam test").encode())
        router.wait_for(f"revoked {hostname}", 20)
        # It deletes right after applying: wait for the gate to have seen that too.
        deadline = time.monotonic() + 10
        while ("sqs:DeleteMessage", _arn(queue)) not in world.gate.allowed_by(ROLE):
            assert time.monotonic() < deadline, "the router did not delete the revocation"
            time.sleep(0.05)
    finally:
        router.stop()
    return world


def _arn(queue_url: str) -> str:
    return f"arn:aws:sqs:{REGION}:{ACCOUNT_ID}:{queue_url.rsplit('/', 1)[-1]}"


def test_the_router_role_receives_and_deletes_on_its_own_queue(revoked: RouterWorld) -> None:
    denied = [f"{d.action} on {d.resource}" for d in revoked.gate.denied()
              if d.principal == ROLE]
    assert not denied, "template.yaml does not allow the router:\n" + "\n".join(denied)
    queue = _arn(revoked.ref("RouterRevocationsQueue"))
    assert revoked.gate.allowed_by(ROLE) == {("sqs:ReceiveMessage", queue),
                                             ("sqs:DeleteMessage", queue)}
    unused = unused_grants(router_policies(), revoked.stack, revoked.gate.allowed_by(ROLE))
    assert not unused, "RouterRole allows what the router never does:\n" + "\n".join(unused)


def test_the_router_role_may_do_nothing_else(revoked: RouterWorld) -> None:
    sqs, sns = revoked.client("sqs"), revoked.client("sns")
    other = revoked.endpoint.client("sqs").create_queue(  # a second router's queue
        QueueName=f"{revoked.stack.name}-OtherRouterRevocationsQueue")["QueueUrl"]
    own, events = revoked.ref("RouterRevocationsQueue"), revoked.ref("EventsQueue")
    attempts: dict[str, Callable[[], Any]] = {
        "receive from another router's queue": lambda: sqs.receive_message(QueueUrl=other),
        "receive from the events queue": lambda: sqs.receive_message(QueueUrl=events),
        "send to the events queue": lambda: sqs.send_message(QueueUrl=events,
                                                             MessageBody="{}"),
        "send to its own queue": lambda: sqs.send_message(QueueUrl=own, MessageBody="{}"),
        "purge its own queue": lambda: sqs.purge_queue(QueueUrl=own),
        "publish a revocation": lambda: sns.publish(TopicArn=revoked.ref("RevocationsTopic"),
                                                    Message="{}"),
        "read a table": lambda: revoked.client("dynamodb").get_item(
            TableName=revoked.ref("NodesTable"), Key={"node_id": {"S": "n"}}),
        "read the signing key": lambda: revoked.client("ssm").get_parameter(
            Name=revoked.stack.environment["DIT4C_SIGNING_KEY_PARAMETER"]),
        "assume the nodes' role": lambda: revoked.client("sts").assume_role(
            RoleArn=revoked.stack.resources["NodeRole"].attributes["Arn"],
            RoleSessionName="stolen"),
    }
    allowed = []
    for what, attempt in attempts.items():
        try:
            attempt()
        except botocore.exceptions.ClientError as exc:
            code = exc.response["Error"]["Code"]
            assert "AccessDenied" in code, f"{what}: {code}"
        else:
            allowed.append(what)
    assert not allowed, f"the router's role may {allowed}"
