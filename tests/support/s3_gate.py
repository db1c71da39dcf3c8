"""S3 as AWS checks it, in front of moto: the storage tests' stand-in for IAM.

moto's server answers every S3 request whoever signs it. :class:`S3Gate` is a WSGI middleware
(``MotoServer(wrap=...)``) that authorises each S3 request as AWS would for the credentials that
signed it:

- signed by an assumed role (STS credentials, e.g. a pod's storage): refused once expired
  (``ExpiredToken``), and allowed only if both the role's own policies and the session policy
  given to ``AssumeRole`` allow the request's action on its resource, with the ``s3:prefix``
  condition of ``ListBucket`` (the policy language our policies use: ``Allow`` statements,
  ``*``/``?`` wildcards, ``StringLike``/``StringEquals``);
- signed by ``trusted`` keys (the test's own set-up): passed;
- anything else: ``InvalidAccessKeyId``.

``down`` makes every S3 request fail with 503 (an outage). Other services pass untouched.
"""

from __future__ import annotations

import fnmatch
import json
import re
import threading
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, unquote
from xml.sax.saxutils import escape

from moto.iam.models import iam_backends
from moto.sts.models import sts_backends

from infra.local.aws import ACCOUNT_ID

_CREDENTIAL = re.compile(r"Credential=([^/,\s]+)/[^/]+/[^/]+/([^/]+)/")
WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def _like(pattern: str, value: str) -> bool:
    """IAM's wildcard match (``*`` any run, ``?`` one character), case-sensitive."""
    return fnmatch.fnmatchcase(value, pattern.replace("[", "[[]"))


def _list(value: Any) -> list[str]:
    return [value] if isinstance(value, str) else list(value or [])


def allows(policy: dict[str, Any], action: str, resource: str, context: dict[str, str]) -> bool:
    """Whether ``policy`` allows ``action`` on ``resource`` (no Deny statement matching, one
    Allow statement matching, its conditions met by ``context``)."""
    allowed = False
    for statement in _list_statements(policy):
        if not any(_like(a.lower(), action.lower()) for a in _list(statement.get("Action"))):
            continue
        if not any(_like(r, resource) for r in _list(statement.get("Resource"))):
            continue
        if not _conditions(statement.get("Condition") or {}, context):
            continue
        if statement.get("Effect") == "Deny":
            return False
        allowed = allowed or statement.get("Effect") == "Allow"
    return allowed


def _list_statements(policy: dict[str, Any]) -> list[dict[str, Any]]:
    statements = policy.get("Statement", [])
    return [statements] if isinstance(statements, dict) else list(statements)


def _conditions(conditions: dict[str, Any], context: dict[str, str]) -> bool:
    for operator, tests in conditions.items():
        for key, wanted in tests.items():
            value = context.get(key)
            if value is None:
                return False
            if operator == "StringLike":
                ok = any(_like(w, value) for w in _list(wanted))
            elif operator == "StringEquals":
                ok = value in _list(wanted)
            else:  # an operator this stand-in does not know: never met
                return False
            if not ok:
                return False
    return True


def s3_request(method: str, path: str, query: dict[str, list[str]],  # noqa: PLR0911 - per kind
               headers: dict[str, str]) -> list[tuple[str, str, dict[str, str]]]:
    """The (action, resource, condition context) checks an S3 request needs (path style)."""
    bucket, _, key = unquote(path).lstrip("/").partition("/")
    if not bucket:
        return [("s3:ListAllMyBuckets", "*", {})]
    bucket_arn = f"arn:aws:s3:::{bucket}"
    if not key:
        if method == "GET" and not (set(query) - {"list-type", "prefix", "delimiter",
                                                  "continuation-token", "max-keys",
                                                  "encoding-type", "fetch-owner",
                                                  "start-after", "marker"}):
            return [("s3:ListBucket", bucket_arn, {"s3:prefix": query.get("prefix", [""])[0]})]
        return [(f"s3:{method}Bucket", bucket_arn, {})]  # anything else on a bucket: refused
    object_arn = f"{bucket_arn}/{key}"
    if method in ("GET", "HEAD"):
        return [("s3:GetObject", object_arn, {})]
    if method == "DELETE":
        action = "s3:AbortMultipartUpload" if "uploadId" in query else "s3:DeleteObject"
        return [(action, object_arn, {})]
    if method in ("PUT", "POST"):
        checks: list[tuple[str, str, dict[str, str]]] = [("s3:PutObject", object_arn, {})]
        source = headers.get("x-amz-copy-source")
        if source:
            checks.append(("s3:GetObject", f"arn:aws:s3:::{unquote(source).lstrip('/')}", {}))
        return checks
    return [(f"s3:{method}", object_arn, {})]


def _error(start_response: Callable[..., Any], status: str, code: str,
           message: str) -> list[bytes]:
    body = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
            f"<Message>{escape(message)}</Message></Error>").encode()
    start_response(status, [("Content-Type", "application/xml"),
                            ("Content-Length", str(len(body)))])
    return [body]


class S3Gate:
    """The WSGI middleware (see the module docstring); ``decisions`` records refusals."""

    def __init__(self, trusted: Iterable[str]) -> None:
        self.trusted = set(trusted)
        self.down = False
        self.refusals: list[str] = []
        self._lock = threading.Lock()

    def wrap(self, app: WsgiApp) -> WsgiApp:
        def gated(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            found = _CREDENTIAL.search(environ.get("HTTP_AUTHORIZATION", ""))
            if found is None or found.group(2) != "s3":
                return app(environ, start_response)
            if self.down:
                return _error(start_response, "503 Service Unavailable", "ServiceUnavailable",
                              "S3 is down (test outage)")
            refusal = self._refusal(found.group(1), environ)
            if refusal is None:
                return app(environ, start_response)
            with self._lock:
                self.refusals.append(f"{environ['REQUEST_METHOD']} {environ['PATH_INFO']}: "
                                     f"{refusal[1]}")
            return _error(start_response, "403 Forbidden", *refusal)

        return gated

    def _refusal(self, key_id: str,  # noqa: PLR0911 - one return per refusal
                 environ: dict[str, Any]) -> tuple[str, str] | None:
        if key_id in self.trusted:
            return None
        role = next((r for r in sts_backends[ACCOUNT_ID]["aws"].assumed_roles
                     if r.access_key_id == key_id), None)
        if role is None:
            return "InvalidAccessKeyId", f"no such access key {key_id}"
        if environ.get("HTTP_X_AMZ_SECURITY_TOKEN") != role.session_token:
            return "InvalidToken", "the session token does not match"
        if datetime.now(UTC).replace(tzinfo=None) >= role.expiration:
            return "ExpiredToken", "the provided token has expired"
        policies = [json.loads(role.policy)] if role.policy else []
        iam = iam_backends[ACCOUNT_ID]["aws"]
        try:
            iam_role = iam.get_role_by_arn(role.role_arn)
        except Exception:
            return "AccessDenied", f"no role {role.role_arn}"
        role_policies = [json.loads(d) if isinstance(d, str) else d
                         for d in iam_role.policies.values()]
        headers = {k[5:].lower().replace("_", "-"): v for k, v in environ.items()
                   if k.startswith("HTTP_")}
        query = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
        for action, resource, context in s3_request(environ["REQUEST_METHOD"],
                                                    environ["PATH_INFO"], query, headers):
            if not any(allows(p, action, resource, context) for p in role_policies):
                return "AccessDenied", f"the role does not allow {action} on {resource}"
            if policies and not all(allows(p, action, resource, context) for p in policies):
                return "AccessDenied", f"the session policy does not allow {action} on {resource}"
        return None
