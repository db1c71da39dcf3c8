"""What the deployment tests share: the packaged artifact run as Lambda would, and the events
Lambda hands it (API Gateway, SQS, EventBridge schedule), over moto's server.

- :func:`packaged_artifact` builds the artifact with ``make package``'s own code for this
  machine's architecture (the same requirements, sources and pruning; only the wheels' platform
  tag differs from the arm64 build) and unzips it.
- :class:`FunctionProcess` runs its handlers in an interpreter of the template's runtime version
  that sees nothing but the artifact (``tests/support/lambda_runtime.py``), with the environment and
  credentials given: one process per function, warm between invocations.
- :func:`http_api_event` / :func:`rest_api_event` are what API Gateway sends through the
  template's catch-all route (HTTP API payload format 1.0, ``$default`` stage) or a REST API's
  ``/{proxy+}`` resource on a stage; :func:`sqs_event` and :func:`scheduled_event` are the
  events function's and the reaper's.
- :func:`provisioned` starts moto's server and creates the template's resources in it with the
  local stack's provisioner; :func:`with_event_source_mappings` adds the events trigger as a
  mapping moto holds (the local stack has none), for the reaper to switch.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import functools
import io
import json
import selectors
import shutil
import subprocess
import tempfile
import time
import uuid
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlencode

from infra import package
from infra.local.aws import ACCOUNT_ID, AwsEndpoint
from infra.local.moto_server import MotoServer
from infra.local.provision import Provisioner, Stack
from infra.local.template import Template
from protocol.messages import SIGNATURE_ATTRIBUTE

RUNTIME = Path(__file__).resolve().parent / "lambda_runtime.py"
REGION = "us-east-1"
API_ID = "a1b2c3d4e5"


class FunctionError(Exception):
    """The handler raised, or the process died; the message has its traceback or log."""


def runtime_python() -> Path:
    """An interpreter of the template's runtime version, or an error saying how to get one."""
    version = package.Target.from_template().python
    python = package.find_python(version)
    if python is None:
        raise RuntimeError(f"the deployment tests run the artifact on Python {version} (the "
                           f"template's runtime): install it (pyenv install {version}) or set "
                           "DIT4C_LAMBDA_PYTHON")
    return python


@functools.cache
def packaged_artifact() -> Path:
    """The artifact for this machine, built by ``infra.package`` and unzipped (once
    per test process, shared by every test that runs it)."""
    arch = package.host_arch()
    out, _, _ = package.build(package.BUILD / "test" / f"lambda-{arch}.zip",
                                     arch=arch)
    task = Path(tempfile.mkdtemp(prefix="task-", dir=out.parent))
    atexit.register(shutil.rmtree, task, ignore_errors=True)
    with zipfile.ZipFile(out) as archive:
        archive.extractall(task)
    return task


class FunctionProcess:
    """One warm Lambda function: ``invoke(handler, event)`` returns what the handler returned."""

    def __init__(self, artifact: Path, environment: Mapping[str, str], log: Path,
                 python: Path | None = None) -> None:
        self._log_path = log
        self._log: IO[bytes] = log.open("wb")
        home = log.parent / f"{log.stem}-home"
        home.mkdir(exist_ok=True)
        env = {"HOME": str(home), "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8",
               "AWS_REGION": REGION, "AWS_DEFAULT_REGION": REGION, **environment}
        self._process = subprocess.Popen(
            [str(python or runtime_python()), "-I", "-S", str(RUNTIME), str(artifact)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, env=env)
        self._selector = selectors.DefaultSelector()
        assert self._process.stdout is not None
        self._selector.register(self._process.stdout, selectors.EVENT_READ)

    def invoke(self, handler: str, event: Mapping[str, Any], timeout: float = 60.0) -> Any:
        stdin, stdout = self._process.stdin, self._process.stdout
        assert stdin is not None and stdout is not None
        stdin.write(json.dumps({"handler": handler, "event": event}).encode() + b"\n")
        stdin.flush()
        if not self._selector.select(timeout):
            raise FunctionError(f"{handler}: no answer within {timeout} s\n{self.log_tail()}")
        line = stdout.readline()
        if not line:
            raise FunctionError(f"{handler}: the process exited ({self._process.poll()})\n"
                                f"{self.log_tail()}")
        answer = json.loads(line)
        if "error" in answer:
            raise FunctionError(f"{handler}: {answer['error']}: {answer['message']}\n"
                                f"{answer['trace']}")
        return answer["result"]

    def log_tail(self, lines: int = 40) -> str:
        self._log.flush()
        return "\n".join(self._log_path.read_text(errors="replace").splitlines()[-lines:])

    def close(self) -> None:
        if self._process.stdin is not None:
            self._process.stdin.close()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(timeout=10)
        if self._process.stdout is not None:
            self._process.stdout.close()
        self._selector.close()
        self._log.close()


# --- events -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class HttpRequest:
    method: str
    path: str
    query: Sequence[tuple[str, str]] = ()
    headers: Mapping[str, str] | None = None
    body: bytes | None = None

    @property
    def target(self) -> str:
        """Path and query string, as a browser sends them."""

        return self.path + (f"?{urlencode(list(self.query))}" if self.query else "")


def _common(request: HttpRequest, *, base64_body: bool) -> dict[str, Any]:
    headers = {k.lower(): v for k, v in (request.headers or {}).items()}
    multi_query: dict[str, list[str]] = {}
    for name, value in request.query:
        multi_query.setdefault(name, []).append(value)
    body: str | None = None
    if request.body is not None:
        body = (base64.b64encode(request.body).decode() if base64_body
                else request.body.decode())
    return {
        "path": request.path,
        "httpMethod": request.method,
        "headers": headers or None,
        "multiValueHeaders": {k: [v] for k, v in headers.items()} or None,
        "queryStringParameters": {k: v[-1] for k, v in multi_query.items()} or None,
        "multiValueQueryStringParameters": multi_query or None,
        "stageVariables": None,
        "body": body,
        "isBase64Encoded": base64_body and request.body is not None,
    }


def _context(request: HttpRequest, *, stage: str, resource: str, path: str) -> dict[str, Any]:
    now = datetime.now(UTC)
    return {
        "accountId": ACCOUNT_ID, "apiId": API_ID, "stage": stage,
        "domainName": f"{API_ID}.execute-api.{REGION}.amazonaws.com", "domainPrefix": API_ID,
        "extendedRequestId": uuid.uuid4().hex, "requestId": str(uuid.uuid4()),
        "httpMethod": request.method, "path": path, "protocol": "HTTP/1.1",
        "resourceId": resource, "resourcePath": resource,
        "requestTime": now.strftime("%d/%b/%Y:%H:%M:%S +0000"),
        "requestTimeEpoch": int(now.timestamp() * 1000),
        "identity": {"sourceIp": "198.51.100.7", "userAgent": "deploy-test",
                     "accessKey": None, "accountId": None, "caller": None, "user": None,
                     "userArn": None, "cognitoIdentityId": None},
        "authorizer": None,
    }


def http_api_event(request: HttpRequest, *, base64_body: bool = False) -> dict[str, Any]:
    """What an HTTP API's ``$default`` route sends with payload format 1.0."""
    event = _common(request, base64_body=base64_body)
    event.update(version="1.0", resource="$default", pathParameters=None,
                 requestContext=_context(request, stage="$default", resource="$default",
                                         path=request.path))
    return event


def rest_api_event(request: HttpRequest, *, stage: str = "Prod") -> dict[str, Any]:
    """What a REST API's ``/{proxy+}`` resource sends (``/`` has a resource of its own)."""
    event = _common(request, base64_body=False)
    resource = "/" if request.path == "/" else "/{proxy+}"
    event.update(resource=resource,
                 pathParameters=None if resource == "/" else {"proxy": request.path[1:]},
                 requestContext=_context(request, stage=stage, resource=resource,
                                         path=f"/{stage}{request.path}"))
    return event


def sqs_event(bodies: Sequence[str], queue_arn: str,
              signatures: Sequence[str | None] | None = None) -> dict[str, Any]:
    """What an SQS event source mapping hands the function for one batch; ``signatures``:
    each body's node signature (``protocol.messages.SIGNATURE_ATTRIBUTE``), or None."""
    now = str(int(time.time() * 1000))
    signed = signatures if signatures is not None else [None] * len(bodies)
    return {"Records": [{
        "messageId": str(uuid.uuid4()), "receiptHandle": uuid.uuid4().hex, "body": body,
        "attributes": {"ApproximateReceiveCount": "1", "SentTimestamp": now,
                       "SenderId": "AROAEXAMPLE", "ApproximateFirstReceiveTimestamp": now},
        "messageAttributes": {} if signature is None else {
            SIGNATURE_ATTRIBUTE: {"stringValue": signature, "stringListValues": [],
                                  "binaryListValues": [], "dataType": "String"}},
        "md5OfBody": "", "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn, "awsRegion": REGION}
        for body, signature in zip(bodies, signed, strict=True)]}


def scheduled_event(rule_arn: str) -> dict[str, Any]:
    """What an EventBridge schedule hands the function."""
    return {"version": "0", "id": str(uuid.uuid4()), "detail-type": "Scheduled Event",
            "source": "aws.events", "account": ACCOUNT_ID,
            "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), "region": REGION,
            "resources": [rule_arn], "detail": {}}


# --- AWS ---------------------------------------------------------------------------------------


PARAMETERS = {
    "PortalUrl": "https://portal.deploy.test",
    "RouterDomain": "apps.deploy.test",
    "RouterScheme": "https",
    "RouterTunnelUrls": "wss://router.deploy.test/.dit4c/tunnel",
}


@contextlib.contextmanager
def provisioned(stack_name: str, server: MotoServer | None = None
                ) -> Iterator[tuple[AwsEndpoint, Stack]]:
    """moto's server (port 0) holding the template's resources; stopped afterwards."""
    server = server or MotoServer("127.0.0.1", 0)
    endpoint = server.start()
    try:
        yield endpoint, Provisioner(endpoint, stack_name).provision(Template.load(), PARAMETERS)
    finally:
        server.reset()
        server.stop()


def with_event_source_mappings(endpoint: AwsEndpoint, stack: Stack,
                               parameters: Mapping[str, str | Sequence[str]] = PARAMETERS
                               ) -> Stack:
    """The stack with each SQS trigger made a mapping in moto (off, for a function of that
    name moto holds but never runs) and provisioned again to refer to it: the reaper can switch
    it as on Lambda. While one is on, moto would run its function for each message sent to the
    queue: nothing may send to those queues. ``parameters``: the stack's, as first provisioned."""
    iam, lambda_ = endpoint.client("iam"), endpoint.client("lambda")
    role = iam.create_role(RoleName=f"{stack.name}-mappings",
                           AssumeRolePolicyDocument=json.dumps({
                               "Version": "2012-10-17", "Statement": [{
                                   "Effect": "Allow", "Action": "sts:AssumeRole",
                                   "Principal": {"Service": "lambda.amazonaws.com"}}]}))
    code = io.BytesIO()
    with zipfile.ZipFile(code, "w") as archive:
        archive.writestr("never_run.py", "def handler(event, context):\n    raise SystemExit\n")
    for function, queue_url in stack.sqs_sources.items():
        name = f"{stack.name}-{function}"
        lambda_.create_function(FunctionName=name, Role=role["Role"]["Arn"],
                                Runtime=f"python{package.Target.from_template().python}",
                                Handler="never_run.handler", Code={"ZipFile": code.getvalue()})
        arn = endpoint.client("sqs").get_queue_attributes(
            QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        lambda_.create_event_source_mapping(EventSourceArn=arn, FunctionName=name,
                                            Enabled=False)
    return Provisioner(endpoint, stack.name).provision(Template.load(), parameters)


def function_environment(stack: Stack, endpoint: AwsEndpoint,
                         credentials: Mapping[str, str] | None = None, *,
                         function: str | None = None) -> dict[str, str]:
    """A function's environment: the template's Globals (and ``function``'s own), the endpoint,
    and credentials (the local stack's fixed keys unless given, as a role's would be on
    Lambda)."""
    own = stack.function_environments[function] if function else stack.environment
    env = {**own, **endpoint.environment()}
    env.pop("AWS_ENDPOINT_URL", None)
    env.update(credentials or {})
    return env


__all__ = ["FunctionError", "FunctionProcess", "HttpRequest", "function_environment",
           "http_api_event", "packaged_artifact", "provisioned", "rest_api_event",
           "runtime_python", "scheduled_event", "sqs_event", "with_event_source_mappings"]
