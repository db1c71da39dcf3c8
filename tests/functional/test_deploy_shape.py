"""The deployed shape: the packaged handler answers every route as API Gateway delivers it.

Every operation of ``/api/openapi.json`` (which lists every route, the portal's, OAuth2's and the
JWKS too: checked below) is sent three ways and must get the same answer: through
``chalice.local`` as ``make run`` serves it, and to the handler of the *packaged* artifact
(``make package``'s build, unzipped, in an interpreter of the template's runtime that sees
nothing else) as an HTTP API ``$default`` event (payload 1.0: what the template deploys) and as a
REST API ``/{proxy+}`` event on a stage. No answer may be a routing 404 or 405. Unknown paths get
the same JSON 404 all three ways. The events function's SQS batch and the reaper's scheduled
event are replayed to the packaged handlers the same way. All of it runs against one moto server
holding the template's resources, so the three ways see the same state.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from chalice.config import Config as ChaliceConfig

from control_plane import services
from control_plane.app import app, on_event, reap
from control_plane.aws import Clients
from control_plane.bootstrap import ensure_local_defaults
from control_plane.config import Config
from control_plane.services import Services
from infra.local.aws import LOCAL_ACCESS_KEY, LOCAL_SECRET_KEY
from infra.local.portal import PortalGateway
from protocol.messages import NodeHeartbeat
from tests.support.deploy import (
    REGION,
    FunctionError,
    FunctionProcess,
    HttpRequest,
    function_environment,
    http_api_event,
    packaged_artifact,
    provisioned,
    rest_api_event,
    scheduled_event,
    sqs_event,
)

pytestmark = pytest.mark.timeout(300)

ADMIN_PASSWORD = "deploy-shape-admin-1"
FORM = "application/x-www-form-urlencoded"

# A value for each path parameter: unknown ids (the view answers 404 with its own message,
# which proves the request reached it) except where a known one gives a deterministic answer.
PARAMETERS = {"cluster_id": "default", "instance_id": "nosuchinstance",
              "image_id": "nosuchimage", "token_id": "0" * 64, "node_id": "nosuchnode",
              "provider": "nosuchprovider", "name": "portal.js", "username": "nosuchuser"}
QUERIES: dict[tuple[str, str], list[tuple[str, str]]] = {
    ("GET", "/api/instances"): [("all", "true")],
    ("GET", "/oauth/authorize"): [("client_id", "nosuchclient"), ("response_type", "code")],
    ("GET", "/api/login/{provider}"): [("next", "/")],
}
BODIES: dict[tuple[str, str], bytes] = {
    ("POST", "/api/login"): json.dumps({"username": "admin", "password": "wrong"}).encode(),
    ("POST", "/oauth/token"): b"grant_type=authorization_code&code=nosuchcode",
}
UNKNOWN = [HttpRequest("GET", "/nope"), HttpRequest("GET", "/api/nope"),
           HttpRequest("POST", "/api/instances/x/y/z"), HttpRequest("GET", "/portal/a/b")]


@dataclass
class Deployed:
    function: FunctionProcess
    gateway: PortalGateway
    cookie: str
    csrf: str
    events_queue_arn: str


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployed]:
    tmp = tmp_path_factory.mktemp("deploy-shape")
    artifact = packaged_artifact()
    with provisioned(f"shape{uuid.uuid4().hex[:6]}") as (endpoint, stack):
        env = function_environment(stack, endpoint)
        config = Config.from_env(env)
        session = boto3.session.Session(aws_access_key_id=LOCAL_ACCESS_KEY,
                                        aws_secret_access_key=LOCAL_SECRET_KEY,
                                        region_name=REGION)
        services.use(Services.build(config, Clients(config, session=session)))
        function = FunctionProcess(artifact, env, tmp / "function.log")
        try:
            ensure_local_defaults(ADMIN_PASSWORD, [])
            gateway = PortalGateway(app, ChaliceConfig.create(lambda_timeout=29))
            login = gateway.handle_request(
                "POST", "/api/login", {"content-type": "application/json"},
                json.dumps({"username": "admin", "password": ADMIN_PASSWORD}).encode())
            assert login["statusCode"] == 200, login
            cookie = _set_cookies(login)[0].split(";", 1)[0]
            yield Deployed(function, gateway, cookie, json.loads(login["body"])["csrf_token"],
                           stack.environment["DIT4C_EVENTS_QUEUE_ARN"])
        finally:
            function.close()
            services.use(None)


def _set_cookies(response: dict[str, Any]) -> list[str]:
    headers = {k.lower(): v for k, v in (response.get("headers") or {}).items()}
    multi = {k.lower(): v for k, v in (response.get("multiValueHeaders") or {}).items()}
    return list(multi.get("set-cookie") or ([headers["set-cookie"]] if "set-cookie" in headers
                                             else []))


def _answer(response: dict[str, Any]) -> dict[str, Any]:
    """What a browser would see of a Lambda proxy response, minus what is random per call."""
    headers = {k.lower(): v for k, v in (response.get("headers") or {}).items()}
    body = response.get("body") or ""
    if response.get("isBase64Encoded"):
        body = base64.b64decode(body).decode()
    elif isinstance(body, bytes):
        body = body.decode()
    content_type = headers.get("content-type", "")
    shown: Any = body
    if content_type.startswith("application/json") and body:
        parsed = json.loads(body)
        # Successful answers may carry fresh random values (tokens): compare their keys.
        shown = parsed if response["statusCode"] >= 400 else _shape(parsed)
    return {"status": response["statusCode"], "content-type": content_type, "body": shown,
            "location": headers.get("location"),
            "cookies": sorted(c.split("=", 1)[0] for c in _set_cookies(response))}


def _shape(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in sorted(value.items())}
    if isinstance(value, list):
        return [_shape(v) for v in value[:1]]
    return type(value).__name__


def _operations(spec: dict[str, Any]) -> list[tuple[str, str]]:
    return sorted((method.upper(), path) for path, ops in spec["paths"].items() for method in ops)


def _request(deployed: Deployed, method: str, template: str) -> HttpRequest:
    path = template.format(**PARAMETERS)
    body = BODIES.get((method, template), b"{}" if method == "POST" else None)
    content_type = FORM if template == "/oauth/token" else "application/json"
    headers = {"content-type": content_type, "cookie": deployed.cookie,
               "x-csrf-token": deployed.csrf}
    return HttpRequest(method, path, tuple(QUERIES.get((method, template), ())), headers, body)


def _three_ways(deployed: Deployed, request: HttpRequest) -> list[dict[str, Any]]:
    local = deployed.gateway.handle_request(request.method, request.target,
                                            dict(request.headers or {}), request.body)
    base64_body = (request.headers or {}).get("content-type") == FORM
    http = deployed.function.invoke("control_plane.app.app",
                                    http_api_event(request, base64_body=base64_body))
    rest = deployed.function.invoke("control_plane.app.app", rest_api_event(request))
    return [_answer(local), _answer(http), _answer(rest)]


def test_every_operation_reaches_its_route_as_api_gateway_sends_it(deployed: Deployed):
    spec_response = deployed.function.invoke(
        "control_plane.app.app", http_api_event(HttpRequest("GET", "/api/openapi.json")))
    assert spec_response["statusCode"] == 200
    spec = json.loads(spec_response["body"])
    operations = _operations(spec)
    # The spec lists every route of the app: portal pages, OAuth2, JWKS, health included.
    assert {path for _, path in operations} == set(app.routes)
    assert {("GET", "/"), ("GET", "/login"), ("GET", "/portal/{name}"),
            ("GET", "/oauth/authorize"), ("POST", "/oauth/token"),
            ("GET", "/.well-known/jwks.json")} <= set(operations)

    mismatched, misrouted = [], []
    for method, template in operations:
        local, http, rest = _three_ways(deployed, _request(deployed, method, template))
        if not local == http == rest:
            mismatched.append(f"{method} {template}: local {local}\n  http {http}\n  rest {rest}")
        body = http["body"] if isinstance(http["body"], dict) else {}
        message = str(body.get("error", {}).get("message", ""))
        if http["status"] == 405 or message.startswith("no such path"):
            misrouted.append(f"{method} {template}: {http}")
    assert not misrouted, "routing failed:\n" + "\n".join(misrouted)
    assert not mismatched, "answers differ:\n" + "\n".join(mismatched)


def test_the_portal_pages_come_whole(deployed: Deployed):
    page = deployed.function.invoke("control_plane.app.app",
                                    http_api_event(HttpRequest("GET", "/")))
    assert page["statusCode"] == 200
    assert page["headers"]["Content-Type"].startswith("text/html")
    assert 'src="/portal/portal.js"' in page["body"]


@pytest.mark.parametrize("request_", UNKNOWN, ids=lambda r: f"{r.method} {r.path}")
def test_unknown_paths_get_the_same_json_404(deployed: Deployed, request_: HttpRequest):
    local, http, rest = _three_ways(deployed, request_)
    assert local == http == rest
    assert local["status"] == 404
    assert local["body"] == {"error": {"code": "not_found",
                                       "message": f"no such path: {request_.path}"}}


def test_a_known_path_with_another_method_is_a_405_in_the_api_shape(deployed: Deployed):
    local, http, rest = _three_ways(deployed, HttpRequest("DELETE", "/api/me"))
    assert local == http == rest
    assert local["status"] == 405 and local["body"]["error"]["code"] == "method_not_allowed"


def test_the_events_batch_is_handled_by_the_packaged_function(deployed: Deployed):
    heartbeat = NodeHeartbeat(node_id="nosuchnode", version="test", cpu_total=1.0,
                              memory_mb_total=512, cpu_used=0.0, memory_mb_used=0, load=0.0,
                              running=[]).encode()
    event = sqs_event([heartbeat, "not json at all"], deployed.events_queue_arn)
    packaged = deployed.function.invoke("control_plane.app.on_event", event)
    assert packaged == on_event(event, None)
    assert packaged == {"batchItemFailures": []}  # unknown node and garbage: dropped, logged


def test_the_reaper_runs_from_the_scheduled_event(deployed: Deployed):
    event = scheduled_event("arn:aws:events:us-east-1:123456789012:rule/reaper")
    packaged = deployed.function.invoke("control_plane.app.reap", event)
    assert isinstance(packaged, dict)
    assert packaged == reap(event, None)


def test_the_packaged_interpreter_sees_only_the_artifact(deployed: Deployed):
    """Not the test suite's packages: moto, docker and aiohttp are not importable there."""
    for module in ("moto", "docker", "aiohttp"):
        with pytest.raises(FunctionError, match=f"No module named '{module}'"):
            deployed.function.invoke(f"{module}.anything", {})
