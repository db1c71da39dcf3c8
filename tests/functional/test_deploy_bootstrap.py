"""``python -m control_plane bootstrap``: a fresh deployment made usable with one command.

The command runs as an admin would run it (its own process, AWS from boto3's chain: here
``AWS_ENDPOINT_URL`` and keys pointing at moto's server), against a stack whose API function
holds the template's settings (a CloudFormation stack in moto with an ``ApiFunction`` whose
environment is what SAM would give it). Bad input and failure: a one-line error naming what is
wrong, exit 1, nothing half-made.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest

from control_plane.aws import Clients
from control_plane.bodies import DEFAULT_CLUSTER, Enroll, Login
from control_plane.bootstrap import DEMO_CATALOG
from control_plane.config import Config
from control_plane.errors import Unauthorized
from control_plane.services import Services
from infra.local.aws import LOCAL_ACCESS_KEY, LOCAL_SECRET_KEY, AwsEndpoint
from infra.local.moto_server import MotoServer
from infra.local.provision import Provisioner, Stack
from infra.local.template import Template
from protocol.tokens import SigningKey
from tests.support.deploy import PARAMETERS, REGION
from tests.support.iam_gate import IamGate

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parents[2]
PASSWORD = "bootstrap-password-1"


@dataclass
class Deployment:
    endpoint: AwsEndpoint
    stack: Stack
    stack_name: str
    function: str

    def services(self) -> Services:
        config = Config.from_env({**self.stack.environment, "AWS_REGION": REGION,
                                  "DIT4C_AWS_ENDPOINT_URL": str(self.endpoint.url)})
        session = boto3.session.Session(aws_access_key_id=LOCAL_ACCESS_KEY,
                                        aws_secret_access_key=LOCAL_SECRET_KEY,
                                        region_name=REGION)
        return Services.build(config, Clients(config, session=session))


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[AwsEndpoint, IamGate]]:
    gate = IamGate()
    moto = MotoServer(wrap=gate)
    endpoint = moto.start()
    yield endpoint, gate
    moto.reset()
    moto.stop()


def _deploy(endpoint: AwsEndpoint) -> Deployment:
    """The template's resources, and a CloudFormation stack holding the API function with the
    environment SAM gives it (a Lambda function in moto: its code never runs here)."""
    name = f"boot{uuid.uuid4().hex[:6]}"
    stack = Provisioner(endpoint, name).provision(Template.load(), PARAMETERS)
    role = endpoint.client("iam").create_role(
        RoleName=f"{name}-ApiFunctionRole", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    function = {"Type": "AWS::Lambda::Function", "Properties": {
        "Handler": "control_plane.app.app", "Runtime": "python3.13", "Role": role,
        "Code": {"ZipFile": "app = None"},
        "Environment": {"Variables": dict(stack.environment)}}}
    cloudformation = endpoint.client("cloudformation")
    cloudformation.create_stack(StackName=name, TemplateBody=json.dumps(
        {"Resources": {"ApiFunction": function}}))
    physical = cloudformation.describe_stack_resource(
        StackName=name, LogicalResourceId="ApiFunction")["StackResourceDetail"]
    return Deployment(endpoint, stack, name, physical["PhysicalResourceId"])


@pytest.fixture
def deployment(server: tuple[AwsEndpoint, IamGate]) -> Deployment:
    return _deploy(server[0])


def _run(endpoint: AwsEndpoint, *args: str, stdin: str = "", env: dict[str, str] | None = None,
         credentials: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("AWS_", "DIT4C_"))}
    base.update({"AWS_ENDPOINT_URL": str(endpoint.url), "AWS_DEFAULT_REGION": REGION,
                 **(credentials or {"AWS_ACCESS_KEY_ID": LOCAL_ACCESS_KEY,
                                     "AWS_SECRET_ACCESS_KEY": LOCAL_SECRET_KEY}),
                 **(env or {})})
    return subprocess.run([sys.executable, "-m", "control_plane", "bootstrap", *args],
                          input=stdin, capture_output=True, text=True, env=base, cwd=REPO,
                          timeout=60, check=False)


def _one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, result
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("bootstrap: ")
    return lines[0]


def test_a_fresh_deployment_becomes_usable(deployment: Deployment):
    result = _run(deployment.endpoint, "--stack", deployment.stack_name,
                  stdin=PASSWORD + "\n")
    assert result.returncode == 0, result.stderr
    assert f"portal:     {PARAMETERS['PortalUrl']}" in result.stdout
    join = next(line.split() for line in result.stdout.splitlines() if " join " in line)
    assert join[:6] == ["python", "-m", "node_daemon", "join", "--portal",
                        PARAMETERS["PortalUrl"]]
    svc = deployment.services()
    assert svc.accounts.login(Login(username="admin", password=PASSWORD), "203.0.113.1").user.admin
    assert svc.nodes.get_cluster(DEFAULT_CLUSTER)
    images = {i.image for i in svc.catalog.list_for("admin")}
    assert images == {entry.image for entry in DEMO_CATALOG}
    assert svc.keys.jwks()["keys"]
    enrolled = svc.nodes.enroll(Enroll(join_token=join[join.index("--token") + 1],
                                       public_jwk=SigningKey.generate().public_jwk(),
                                       name="first", cpu=2, memory_mb=2048))
    assert enrolled.cluster_id == DEFAULT_CLUSTER


def test_a_second_bootstrap_changes_nothing(deployment: Deployment):
    first = _run(deployment.endpoint, "--function", deployment.function,
                 env={"DIT4C_ADMIN_PASSWORD": PASSWORD})
    assert first.returncode == 0, first.stderr
    second = _run(deployment.endpoint, "--function", deployment.function,
                  env={"DIT4C_ADMIN_PASSWORD": "another-password-2"})
    assert "already bootstrapped" in _one_line_error(second)
    svc = deployment.services()
    assert svc.accounts.login(Login(username="admin", password=PASSWORD), "203.0.113.2")
    with pytest.raises(Unauthorized):
        svc.accounts.login(Login(username="admin", password="another-password-2"),
                           "203.0.113.2")


@pytest.mark.parametrize(("args", "named"), [
    (("--stack", "no-such-stack"), "no-such-stack"),
    (("--function", "no-such-function"), "no-such-function"),
])
def test_a_wrong_stack_or_function_is_named(server, args, named):
    error = _one_line_error(_run(server[0], *args, stdin=PASSWORD + "\n"))
    assert named in error


def test_a_function_that_is_not_the_api_is_refused(server):
    endpoint = server[0]
    role = endpoint.client("iam").create_role(
        RoleName=f"other{uuid.uuid4().hex[:6]}", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    name = f"other{uuid.uuid4().hex[:6]}"
    endpoint.client("lambda").create_function(
        FunctionName=name, Runtime="python3.13", Role=role, Handler="x.y",
        Code={"ZipFile": b"PK\x05\x06" + b"\0" * 18})
    assert "not the dit4c API function" in _one_line_error(
        _run(endpoint, "--function", name, stdin=PASSWORD + "\n"))


def test_a_bad_password_is_refused_before_anything_is_made(deployment: Deployment):
    error = _one_line_error(_run(deployment.endpoint, "--function", deployment.function,
                                 stdin="short\n"))
    assert "password" in error
    svc = deployment.services()
    assert not svc.accounts.exists("admin")
    assert list(svc.nodes.all_clusters()) == []


def test_missing_permissions_are_named_and_nothing_is_made(deployment: Deployment):
    """An operator whose role may read the function but not the tables."""
    iam, sts = deployment.endpoint.client("iam"), deployment.endpoint.client("sts")
    name = f"{deployment.stack_name}-reader"
    role = iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
                                                "Principal": {"AWS": "*"}}]}))["Role"]["Arn"]
    iam.put_role_policy(RoleName=name, PolicyName="read-function", PolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [{"Effect": "Allow",
                                                "Action": "lambda:GetFunctionConfiguration",
                                                "Resource": "*"}]}))
    creds = sts.assume_role(RoleArn=role, RoleSessionName="operator")["Credentials"]
    error = _one_line_error(_run(
        deployment.endpoint, "--function", deployment.function, stdin=PASSWORD + "\n",
        credentials={"AWS_ACCESS_KEY_ID": creds["AccessKeyId"],
                     "AWS_SECRET_ACCESS_KEY": creds["SecretAccessKey"],
                     "AWS_SESSION_TOKEN": creds["SessionToken"]}))
    assert "AccessDenied" in error and "dynamodb:GetItem" in error
    svc = deployment.services()
    assert not svc.accounts.exists("admin")
    assert list(svc.nodes.all_clusters()) == []
