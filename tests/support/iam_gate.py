"""Least privilege checked as IAM would check it: every AWS call a function makes is
authorised against the policies the template gives that function, and nothing else.

- :func:`function_policies`: SAM's own translator (aws-sam-translator) turns ``template.yaml``
  into CloudFormation; each function's generated role holds its policies (the template's
  statements) and the AWS managed policies SAM adds (their documents are moto's copies).
- :func:`function_credentials`: that role made in moto with exactly those policies (intrinsics
  resolved against the provisioned stack), assumed as Lambda assumes it.
- :class:`IamGate`: a WSGI middleware in front of moto's server. moto checks policies itself
  only when told to (``INITIAL_NO_AUTH_ACTION_COUNT``), and then knows the resource of an SQS,
  STS or S3 request but takes DynamoDB, SNS and SSM requests as ``*``, so a policy naming a
  table can never match. The gate authenticates each request signed by an assumed role with
  moto's own SigV4 check, works out every IAM action the request needs on every resource ARN
  (a ``TransactWriteItems`` needs ``PutItem``/``UpdateItem``/... on each table it touches; a
  ``CreateQueue`` with tags needs ``sqs:TagQueue`` too) and asks moto's policy evaluator. A
  denied request gets ``AccessDenied`` in the service's error shape; every decision is recorded
  (:attr:`IamGate.decisions`) for the test to report. Requests signed otherwise (the test's own
  set-up) pass unchecked.
"""

from __future__ import annotations

import copy
import functools
import io
import json
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote

import boto3
from moto.iam.access_control import IAMPolicy, IAMPolicyStatement, IAMRequest, PermissionResult
from moto.iam.aws_managed_policies import aws_managed_policies_data
from moto.iam.models import iam_backends
from samtranslator.parser.parser import Parser
from samtranslator.translator.translator import Translator
from werkzeug.datastructures import EnvironHeaders
from werkzeug.exceptions import HTTPException

from infra.local.aws import ACCOUNT_ID, AwsEndpoint
from infra.local.provision import Stack
from infra.local.template import Template

REGION = "us-east-1"
LAMBDA_TRUST = {"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"},
     "Action": "sts:AssumeRole"}]}


@dataclass(frozen=True)
class FunctionPolicies:
    """One function's role as SAM translates it (intrinsics not yet resolved)."""

    function: str
    inline: dict[str, Any]
    """Policy name -> document."""
    managed: tuple[str, ...]
    """AWS managed policy ARNs."""


def function_policies(template: Template) -> dict[str, FunctionPolicies]:
    """Every ``AWS::Serverless::Function``'s role, through SAM's translator."""

    document = copy.deepcopy(dict(template.document))
    # The translator wants code in S3; where the code is does not change a policy.
    document.setdefault("Globals", {}).setdefault("Function", {})["CodeUri"] = (
        "s3://translate/lambda.zip")
    translator = Translator(None, Parser(), boto_session=boto3.session.Session(
        region_name=REGION))
    translated = translator.translate(document, parameter_values={},
                                      get_managed_policy_map=lambda: {})
    resources = translated["Resources"]
    roles = {}
    for logical_id, resource in resources.items():
        if resource["Type"] != "AWS::Lambda::Function":
            continue
        role_ref = resource["Properties"]["Role"]["Fn::GetAtt"][0]
        role = resources[role_ref]["Properties"]
        roles[logical_id] = FunctionPolicies(
            function=logical_id,
            inline={p["PolicyName"]: p["PolicyDocument"] for p in role.get("Policies", [])},
            managed=tuple(_arn_text(arn) for arn in role.get("ManagedPolicyArns", [])))
    return roles


def _arn_text(arn: Any) -> str:
    if isinstance(arn, dict) and "Fn::Sub" in arn:
        return str(arn["Fn::Sub"]).replace("${AWS::Partition}", "aws")
    return str(arn)


def managed_policy_document(arn: str) -> dict[str, Any]:
    """An AWS managed policy's document (moto ships AWS's list)."""

    return dict(_managed_policies()[arn.rsplit("/", 1)[-1]]["Document"])


@functools.cache
def _managed_policies() -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(aws_managed_policies_data)  # ~0.3 s: once
    return parsed


def resolved_documents(stack: Stack, policies: FunctionPolicies) -> dict[str, dict[str, Any]]:
    """The function's policies as IAM holds them for this stack: policy name -> document
    (intrinsics resolved against what was provisioned; AWS managed ones as ``managed-<name>``)."""
    assert stack.resolver is not None
    documents = {name: stack.resolver.resolve(document, f"{policies.function}.{name}")
                 for name, document in policies.inline.items()}
    for arn in policies.managed:
        documents[f"managed-{arn.rsplit('/', 1)[-1]}"] = managed_policy_document(arn)
    return documents


def role_name(stack: Stack, function: str) -> str:
    return f"{stack.name}-{function}Role"


def function_credentials(endpoint: AwsEndpoint, stack: Stack, policies: FunctionPolicies
                         ) -> dict[str, str]:
    """Make the function's role (exactly its policies) in moto and assume it, as Lambda does;
    returns the environment variables Lambda would set."""
    iam, sts = endpoint.client("iam"), endpoint.client("sts")
    name = role_name(stack, policies.function)
    role = iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(LAMBDA_TRUST))
    for policy_name, document in resolved_documents(stack, policies).items():
        iam.put_role_policy(RoleName=name, PolicyName=policy_name,
                            PolicyDocument=json.dumps(document))
    creds = sts.assume_role(RoleArn=role["Role"]["Arn"],
                            RoleSessionName=policies.function)["Credentials"]
    return {"AWS_ACCESS_KEY_ID": creds["AccessKeyId"],
            "AWS_SECRET_ACCESS_KEY": creds["SecretAccessKey"],
            "AWS_SESSION_TOKEN": creds["SessionToken"]}


def allows(policies: Iterable[IAMPolicy], action: str, resource: str, caller_arn: str) -> bool:
    """IAM's decision on one action on one resource for a principal holding ``policies``, by
    moto's evaluator: some statement allows it and none denies it. ``sts:AssumeRole`` also
    needs the role's trust policy to admit ``caller_arn``."""
    results = {p.is_action_permitted(action, resource) for p in policies}
    allowed = PermissionResult.DENIED not in results and PermissionResult.PERMITTED in results
    if allowed and action == "sts:AssumeRole":
        allowed = _trusted(resource, caller_arn)
    return allowed


# --- what a request needs ---------------------------------------------------------------------

_TRANSACT_ACTIONS = {"Put": "PutItem", "Update": "UpdateItem", "Delete": "DeleteItem",
                     "ConditionCheck": "ConditionCheckItem", "Get": "GetItem"}


class UnknownRequest(Exception):
    """The gate does not know which resource this operation touches: teach it."""


def _arn(service: str, resource: str) -> str:
    return f"arn:aws:{service}:{REGION}:{ACCOUNT_ID}:{resource}"


def _dynamodb(operation: str, params: Mapping[str, Any]) -> list[tuple[str, str]]:
    def table(name: str) -> str:
        return _arn("dynamodb", f"table/{name}")

    if operation in ("TransactWriteItems", "TransactGetItems"):
        return [(f"dynamodb:{_TRANSACT_ACTIONS[kind]}", table(body["TableName"]))
                for item in params["TransactItems"] for kind, body in item.items()]
    if operation in ("BatchGetItem", "BatchWriteItem"):
        return [(f"dynamodb:{operation}", table(name)) for name in params["RequestItems"]]
    resource = table(params["TableName"])
    if params.get("IndexName"):
        resource += f"/index/{params['IndexName']}"
    return [(f"dynamodb:{operation}", resource)]


def _sqs(operation: str, params: Mapping[str, Any]) -> list[tuple[str, str]]:
    name = params.get("QueueName") or str(params["QueueUrl"]).rsplit("/", 1)[-1]
    needed = [(f"sqs:{operation}", _arn("sqs", name))]
    if operation == "CreateQueue" and (params.get("tags") or params.get("Tag.1.Key")):
        needed.append(("sqs:TagQueue", _arn("sqs", name)))  # tagging at creation
    return needed


def _sns(operation: str, params: Mapping[str, Any]) -> list[tuple[str, str]]:
    if operation != "Publish":
        raise UnknownRequest(f"sns:{operation}")
    return [("sns:Publish", str(params.get("TopicArn") or params["TargetArn"]))]


def _ssm(operation: str, params: Mapping[str, Any]) -> list[tuple[str, str]]:
    names = params.get("Names") or [params["Name"]]
    return [(f"ssm:{operation}", _arn("ssm", f"parameter/{str(n).lstrip('/')}"))
            for n in names]


def _sts(operation: str, params: Mapping[str, Any]) -> list[tuple[str, str]]:
    if operation == "GetCallerIdentity":
        return []  # always allowed
    if operation != "AssumeRole":
        raise UnknownRequest(f"sts:{operation}")
    return [("sts:AssumeRole", str(params["RoleArn"]))]


def _lambda(operation: str, params: Mapping[str, Any]) -> list[tuple[str, str]]:
    if "UUID" in params:  # an event source mapping's own operations
        return [(f"lambda:{operation}",
                 _arn("lambda", f"event-source-mapping:{params['UUID']}"))]
    return [(f"lambda:{operation}", _arn("lambda", f"function:{params['FunctionName']}"))]


def _events(operation: str, params: Mapping[str, Any]) -> list[tuple[str, str]]:
    bus = params.get("EventBusName") or "default"
    rule = params["Name"] if bus == "default" else f"{bus}/{params['Name']}"
    return [(f"events:{operation}", _arn("events", f"rule/{rule}"))]


def _cloudformation(operation: str, params: Mapping[str, Any]) -> list[tuple[str, str]]:
    return [(f"cloudformation:{operation}",
             _arn("cloudformation", f"stack/{params['StackName']}/*"))]


_RESOURCES: dict[str, Callable[[str, Mapping[str, Any]], list[tuple[str, str]]]] = {
    "dynamodb": _dynamodb, "sqs": _sqs, "sns": _sns, "ssm": _ssm, "sts": _sts,
    "lambda": _lambda, "events": _events, "cloudformation": _cloudformation}
_FUNCTION_CONFIGURATION = re.compile(r"^/2015-03-31/functions/([^/]+)/configuration$")
_EVENT_SOURCE_MAPPING = re.compile(r"^/2015-03-31/event-source-mappings/([^/]+)$")
_MAPPING_OPERATIONS = {"GET": "GetEventSourceMapping", "PUT": "UpdateEventSourceMapping"}


def required(service: str, operation: str, params: Mapping[str, Any]
             ) -> list[tuple[str, str]]:
    """The (IAM action, resource ARN) pairs one request needs, as AWS authorises it."""
    if service not in _RESOURCES:
        raise UnknownRequest(f"{service}:{operation}")
    try:
        return _RESOURCES[service](operation, params)
    except KeyError as exc:
        raise UnknownRequest(f"{service}:{operation} without {exc}") from None


# --- the gate ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Signed:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True)
class Decision:
    principal: str
    """The role session name: the function's logical id."""
    action: str
    resource: str
    allowed: bool


@dataclass
class IamGate:
    """WSGI middleware; see the module docstring. ``gate(moto_app)`` wraps the server's app."""

    decisions: list[Decision] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, app: Callable[..., Iterable[bytes]]) -> Callable[..., Iterable[bytes]]:
        def gated(environ: dict[str, Any], start_response: Callable[..., Any]
                  ) -> Iterable[bytes]:
            length = int(environ.get("CONTENT_LENGTH") or 0)
            body = environ["wsgi.input"].read(length) if length else b""
            environ["wsgi.input"] = io.BytesIO(body)
            denied = self._check(environ, body)
            if denied is None:
                return app(environ, start_response)
            status, headers, payload = denied
            start_response(status, headers)
            return [payload]

        return gated

    def _check(self, environ: dict[str, Any], body: bytes
               ) -> tuple[str, list[tuple[str, str]], bytes] | None:

        headers = dict(EnvironHeaders(environ))
        authorization = headers.get("Authorization", "")
        if "X-Amz-Security-Token" not in headers or "Credential=" not in authorization:
            return None  # not an assumed role: the test's own set-up
        scope = authorization.split("Credential=", 1)[1].split(",", 1)[0].split("/")
        service = scope[3]
        target = headers.get("X-Amz-Target")
        path_info = environ.get("PATH_INFO", "")
        configuration = _FUNCTION_CONFIGURATION.match(path_info)
        mapping = _EVENT_SOURCE_MAPPING.match(path_info)
        # Lambda's REST operations the functions and tests make.
        if service == "lambda" and configuration:
            operation, params = "GetFunctionConfiguration", {
                "FunctionName": unquote(configuration.group(1))}
        elif service == "lambda" and mapping and environ["REQUEST_METHOD"] in _MAPPING_OPERATIONS:
            operation = _MAPPING_OPERATIONS[environ["REQUEST_METHOD"]]
            params = {"UUID": unquote(mapping.group(1))}
        elif target:
            operation = target.rsplit(".", 1)[-1]
            params = json.loads(body or b"{}")
        else:
            form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
            operation, params = form.get("Action", ""), form
        path = environ.get("RAW_URI") or environ.get("PATH_INFO", "/")
        if environ.get("QUERY_STRING") and "?" not in path:
            path += "?" + environ["QUERY_STRING"]
        try:
            needed = required(service, operation, params)
        except UnknownRequest as exc:
            return self._deny(service, "?", str(exc), f"the IAM gate does not know {exc}")
        request = _Signed(environ["REQUEST_METHOD"], path, headers, body)
        for action, resource in needed:
            verdict = self._authorise(request, action, resource)
            if verdict is not None:
                return self._deny(service, verdict, action, resource)
        return None

    def _authorise(self, signed: _Signed, action: str, resource: str) -> str | None:
        """None when allowed, else the denied principal's session name."""

        principal, allowed = "?", False
        try:
            request = IAMRequest(account_id=ACCOUNT_ID, method=signed.method,
                                 path=signed.path, data={}, body=signed.body,
                                 headers=signed.headers, action=action.split(":", 1)[1])
            key = request._access_key
            principal = getattr(key, "_session_name", "?")
            request.check_signature()
            allowed = allows([IAMPolicy(p) for p in key.collect_policies()], action, resource,
                             key.arn)
        except HTTPException:
            allowed = False
        with self._lock:
            self.decisions.append(Decision(principal, action, resource, allowed))
        return None if allowed else principal

    @staticmethod
    def _deny(service: str, principal: str, action: str, resource: str
              ) -> tuple[str, list[tuple[str, str]], bytes]:
        message = f"{principal} is not authorized to perform {action} on {resource}"
        if service in ("dynamodb", "sqs", "ssm"):
            payload = json.dumps({"__type": "AccessDeniedException", "message": message})
            return ("400 Bad Request", [("Content-Type", "application/x-amz-json-1.0"),
                                        ("x-amzn-query-error", "AccessDenied;Sender")],
                    payload.encode())
        xml = (f"<ErrorResponse><Error><Type>Sender</Type><Code>AccessDenied</Code>"
               f"<Message>{message}</Message></Error><RequestId>gate</RequestId>"
               "</ErrorResponse>")
        return "403 Forbidden", [("Content-Type", "text/xml")], xml.encode()

    def denied(self) -> list[Decision]:
        with self._lock:
            return [d for d in self.decisions if not d.allowed]

    def allowed_by(self, principal: str) -> set[tuple[str, str]]:
        with self._lock:
            return {(d.action, d.resource) for d in self.decisions
                    if d.allowed and d.principal == principal}


def _trusted(role_arn: str, caller_arn: str) -> bool:
    """Does the role's trust policy let ``caller_arn`` assume it? A principal of the account
    itself (``arn:aws:iam::ACCOUNT:root``) hands the decision to the caller's own policies, as
    in IAM (moto compares the ARNs literally, which refuses every role session)."""

    role = iam_backends[ACCOUNT_ID]["aws"].get_role_by_arn(role_arn)
    trust = json.loads(role.assume_role_policy_document)
    for statement in trust["Statement"]:
        principals = (statement.get("Principal") or {}).get("AWS", [])
        principals = [principals] if isinstance(principals, str) else principals
        actions = statement.get("Action", [])
        actions = [actions] if isinstance(actions, str) else actions
        if statement.get("Effect") == "Allow" and "sts:AssumeRole" in actions and any(
                p in (f"arn:aws:iam::{ACCOUNT_ID}:root", ACCOUNT_ID, caller_arn)
                for p in principals):
            return True
    return False


def unused_grants(policies: FunctionPolicies, stack: Stack,
                  used: set[tuple[str, str]]) -> list[str]:
    """Each action of each statement of the function's own policies that no allowed request
    used on any of the statement's resources: what the template allows beyond need."""

    assert stack.resolver is not None
    unused = []
    for policy_name, document in policies.inline.items():
        resolved = stack.resolver.resolve(document, policy_name)
        for statement in resolved["Statement"]:
            actions = statement["Action"]
            for action in [actions] if isinstance(actions, str) else actions:
                single = {**statement, "Action": action}
                checker = IAMPolicyStatement(single)
                if not any(checker._check_element_matches("Action", a)
                           and checker._check_element_matches("Resource", r)
                           for a, r in used):
                    unused.append(f"{action} on {statement['Resource']}")
    return unused
