"""Least privilege, proven: each function runs under exactly the role the template gives it.

The three functions run from the packaged artifact, each in its own process with the
credentials of its own role (SAM's translation of ``template.yaml``, made in moto and assumed as
Lambda assumes it), against moto's server behind :class:`tests.support.iam_gate.IamGate`, which
authorises every call as IAM would. A scenario drives everything the functions do: a browser
(admin, two users) through API Gateway events, a node (enrolment, credentials, its state reports
and heartbeats) through the events function's SQS batches, and the reaper's schedule, down to
the run that finds nothing left and switches the events trigger (a mapping moto holds) and its
own schedule off. It fails
on a call the template does not allow (naming the action and resource), and on an action the
template allows that no call used (least privilege: nothing more).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import boto3
import pytest

from control_plane.aws import Clients
from control_plane.config import Config
from control_plane.services import Services
from infra.local.aws import AwsEndpoint
from infra.local.moto_server import MotoServer
from infra.local.provision import Stack
from infra.local.template import Template
from protocol.messages import InstanceStateEvent, NodeHeartbeat, decode
from protocol.tokens import SigningKey, node_claims
from tests.support.deploy import (
    REGION,
    FunctionProcess,
    HttpRequest,
    function_environment,
    http_api_event,
    packaged_artifact,
    provisioned,
    scheduled_event,
    sqs_event,
    with_event_source_mappings,
)
from tests.support.events import sign
from tests.support.iam_gate import IamGate, function_credentials, function_policies, unused_grants
from tests.support.registry import RegistryServer

pytestmark = pytest.mark.timeout(300)

ADMIN_PASSWORD = "iam-admin-password-1"
USER_PASSWORD = "iam-user-password-1"
FUNCTIONS = ("ApiFunction", "EventsFunction", "ReaperFunction")


@dataclass
class World:
    endpoint: AwsEndpoint
    stack: Stack
    gate: IamGate
    functions: dict[str, FunctionProcess]
    admin_services: Services
    policies: dict[str, Any]
    keys: dict[str, SigningKey] = field(default_factory=dict)
    """Each enrolled node's key, by node id."""
    registry: RegistryServer | None = None
    _rule: str = "arn:aws:events:us-east-1:123456789012:rule/reaper"

    @property
    def env(self) -> dict[str, str]:
        return dict(self.stack.environment)

    def api(self, request: HttpRequest) -> dict[str, Any]:
        response: dict[str, Any] = self.functions["ApiFunction"].invoke(
            "control_plane.app.app", http_api_event(request))
        return response

    def events(self, *messages: Any) -> None:
        """Each message as its node sends it: signed with the node's key."""
        signed = [sign(m, self.keys[m.node_id], m.node_id) for m in messages]
        batch = sqs_event([body for body, _ in signed], self.env["DIT4C_EVENTS_QUEUE_ARN"],
                          [signature for _, signature in signed])
        result = self.functions["EventsFunction"].invoke("control_plane.app.on_event", batch)
        assert result == {"batchItemFailures": []}

    def reap(self) -> dict[str, Any]:
        result = self.functions["ReaperFunction"].invoke("control_plane.app.reap",
                                                         scheduled_event(self._rule))
        assert isinstance(result, dict)
        return result

    def node_messages(self, queue_url: str) -> list[Any]:
        sqs = self.endpoint.client("sqs")  # the test's own key: not gated
        got = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10)
        return [decode(m["Body"]) for m in got.get("Messages", [])]


@dataclass
class Browser:
    world: World
    cookie: str = ""
    csrf: str = ""
    history: list[str] = field(default_factory=list)

    def call(self, method: str, path: str, body: Any = None, *,
             query: tuple[tuple[str, str], ...] = (), headers: dict[str, str] | None = None
             ) -> tuple[int, Any]:
        sent = {"content-type": "application/json", **(headers or {})}
        if self.cookie:
            sent["cookie"] = self.cookie
        if self.csrf:
            sent["x-csrf-token"] = self.csrf
        raw = None if body is None else json.dumps(body).encode()
        response = self.world.api(HttpRequest(method, path, query, sent, raw))
        cookies = (response.get("multiValueHeaders") or {}).get("Set-Cookie") or [
            (response.get("headers") or {}).get("Set-Cookie", "")]
        for cookie in cookies:
            # The portal is https here: the session cookie has the __Host- prefix.
            if cookie.startswith(("dit4c_session=", "__Host-dit4c_session=")):
                self.cookie = cookie.split(";", 1)[0]
        text = response.get("body") or ""
        parsed = json.loads(text) if text.startswith(("{", "[")) else text
        self.history.append(f"{method} {path} -> {response['statusCode']}")
        assert response["statusCode"] < 500, f"{method} {path}: {response}"
        return response["statusCode"], parsed

    def login(self, username: str, password: str) -> None:
        status, body = self.call("POST", "/api/login", {"username": username,
                                                         "password": password})
        assert status == 200 and self.cookie, body
        self.csrf = body["csrf_token"]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("deploy-iam")
    artifact = packaged_artifact()
    gate = IamGate()
    policies = function_policies(Template.load())
    with provisioned(f"iam{uuid.uuid4().hex[:6]}", MotoServer(wrap=gate)) as (endpoint, made):
        stack = with_event_source_mappings(endpoint, made)  # the reaper switches the trigger
        admin = _admin_services(stack, endpoint)
        # The image server the saves go to; it starts once the API has made the signing keys
        # (and the CA it trusts): making them is the API function's own call to prove.
        registry = RegistryServer(tmp / "registry", admin.keys, issuer=admin.config.portal_url)
        functions: dict[str, FunctionProcess] = {}
        try:
            for name in FUNCTIONS:
                credentials = function_credentials(endpoint, stack, policies[name])
                env = function_environment(stack, endpoint, credentials, function=name)
                env.update({"DIT4C_REGISTRY": registry.address,
                            "DIT4C_REGISTRY_URL": registry.url})
                # The reaper's view of "silent": the scenario makes a node silent on purpose.
                env["DIT4C_NODE_SILENT_SECONDS"] = "90"
                functions[name] = FunctionProcess(artifact, env, tmp / f"{name}.log")
            world = World(endpoint, stack, gate, functions, admin, policies, registry=registry)
            # The API makes the signing keys (and the registry CA) at its first need of them;
            # the image server can trust that CA from then on.
            world.api(HttpRequest("GET", "/.well-known/jwks.json", (), {}, None))
            registry.start()
            yield world
        finally:
            for function in functions.values():
                function.close()
            registry.stop()


def _admin_services(stack: Stack, endpoint: AwsEndpoint) -> Services:
    """The operator's own view (the test's set-up key: not gated)."""
    config = Config.from_env(function_environment(stack, endpoint))
    session = boto3.session.Session(aws_access_key_id="local-stack-key",
                                    aws_secret_access_key="local-stack-secret",
                                    region_name=REGION)
    return Services.build(config, Clients(config, session=session))


def _enroll(world: World, admin: Browser, cluster_id: str, name: str
            ) -> tuple[SigningKey, dict[str, Any]]:
    status, token = admin.call("POST", f"/api/clusters/{cluster_id}/join-tokens", {})
    assert status == 201, token
    status, listed = admin.call("GET", f"/api/clusters/{cluster_id}/join-tokens")
    assert status == 200 and token["id"] in [t["id"] for t in listed["join_tokens"]], listed
    key = SigningKey.generate()
    node = Browser(world)
    status, enrolment = node.call("POST", "/api/nodes/enroll", {
        "join_token": token["token"], "public_jwk": key.public_jwk(), "name": name, "cpu": 4,
        "memory_mb": 4096})
    assert status == 201, enrolment
    world.keys[enrolment["node_id"]] = key
    status, creds = node.call("POST", f"/api/nodes/{enrolment['node_id']}/credentials",
                              headers={"authorization": "Bearer " + key.sign(
                                  node_claims(node_id=enrolment["node_id"]))})
    assert status == 200 and creds["session_token"], creds
    return key, enrolment


def _heartbeat(node_id: str, running: list[str], holds: list[str] | None = None
               ) -> NodeHeartbeat:
    return NodeHeartbeat(node_id=node_id, version="iam", cpu_total=4.0, memory_mb_total=4096,
                         cpu_used=0.1, memory_mb_used=100, load=0.1, running=running,
                         holds=holds)


def _state(node_id: str, instance_id: str, state: str, **extra: Any) -> InstanceStateEvent:
    return InstanceStateEvent(node_id=node_id, instance_id=instance_id, state=state, **extra)


def _scenario(world: World) -> None:
    admin_svc = world.admin_services
    admin_svc.accounts.set_password("admin", ADMIN_PASSWORD, admin=True)

    anonymous = Browser(world)
    assert anonymous.call("GET", "/.well-known/jwks.json")[0] == 200  # makes the signing key
    assert anonymous.call("GET", "/api/health")[1]["status"] == "ok"
    assert anonymous.call("POST", "/api/login", {"username": "admin",
                                                 "password": "wrong-password"})[0] == 401
    admin = Browser(world)
    admin.login("admin", ADMIN_PASSWORD)
    status, cluster = admin.call("POST", "/api/clusters", {"name": "Lab"})
    assert status == 201, cluster
    cluster_id = cluster["id"]
    assert admin.call("GET", "/api/clusters")[0] == 200
    assert admin.call("POST", f"/api/clusters/{cluster_id}/access",
                      {"public": True, "users": []})[0] == 200
    node_key, node = _enroll(world, admin, cluster_id, "node-1")
    other_key, other_node = _enroll(world, admin, cluster_id, "node-2")
    # A join that fails after enrolling: the node withdraws itself (record and queue).
    leaving_key, leaving = _enroll(world, admin, cluster_id, "node-3")
    status, _ = Browser(world).call(
        "DELETE", f"/api/nodes/{leaving['node_id']}", headers={
            "authorization": "Bearer " + leaving_key.sign(
                node_claims(node_id=leaving["node_id"]))})
    assert status == 204
    # An admin revokes a join token nobody used.
    status, unused = admin.call("POST", f"/api/clusters/{cluster_id}/join-tokens", {})
    assert admin.call("DELETE",
                      f"/api/clusters/{cluster_id}/join-tokens/{unused['id']}")[0] == 204
    node_id, queue = node["node_id"], node["queue_url"]
    # Placements go to node-1: node-2 is only there to report what it should not run.
    assert admin.call("POST", f"/api/nodes/{other_node['node_id']}/drain")[0] == 200
    assert admin.call("GET", f"/api/clusters/{cluster_id}/nodes")[0] == 200
    status, image = admin.call("POST", "/api/images", {"name": "Tool", "image": "tool:1",
                                                       "port": 8080})
    assert status == 201, image
    for username in ("alice", "bob"):
        assert admin.call("POST", "/api/users", {"username": username,
                                                 "password": USER_PASSWORD})[0] == 201
    alice, bob = Browser(world), Browser(world)
    alice.login("alice", USER_PASSWORD)
    bob.login("bob", USER_PASSWORD)

    # Instance A: launch, run, share, stop, save; the saved image shared and deleted.
    status, a = alice.call("POST", "/api/instances", {"image_id": image["id"],
                                                      "cluster_id": cluster_id})
    assert status == 202 and a["state"] == "scheduled", a
    (start,) = world.node_messages(queue)
    world.events(_state(node_id, a["id"], "starting"), _heartbeat(node_id, []))
    world.events(_state(node_id, a["id"], "running"))
    # node-2 reports a pod for A, which is placed on node-1: node-2 is told to discard it.
    world.events(_state(other_node["node_id"], a["id"], "running"))
    assert [m.TYPE for m in world.node_messages(other_node["queue_url"])] == [
        "discard_instance"]
    # node-1 renews A's tunnel token; node-2, where A is not placed, cannot.
    for key, who, expected in ((node_key, node, 200), (other_key, other_node, 403)):
        renewal = who["node_id"]
        assert anonymous.call(
            "POST", f"/api/nodes/{renewal}/instances/{a['id']}/tunnel-token",
            headers={"authorization": "Bearer " + key.sign(node_claims(node_id=renewal))},
        )[0] == expected
    assert alice.call("POST", f"/api/instances/{a['id']}/share", {"username": "bob"})[0] == 200
    assert len(bob.call("GET", "/api/instances")[1]["instances"]) == 1
    assert bob.call("GET", f"/api/instances/{a['id']}")[0] == 200
    assert admin.call("GET", "/api/instances", query=(("all", "true"),))[0] == 200
    status, _ = alice.call("GET", "/oauth/authorize", query=(
        ("client_id", start.oauth.client_id),
        ("redirect_uri", f"{start.url}/.dit4c/auth/callback"),
        ("response_type", "code")))
    assert status in (302, 400)
    assert alice.call("POST", f"/api/instances/{a['id']}/share",
                      {"username": "bob", "revoke": True})[0] == 200
    assert alice.call("POST", f"/api/instances/{a['id']}/stop")[0] == 202
    world.events(_state(node_id, a["id"], "stopping"))
    world.events(_state(node_id, a["id"], "stopped"))
    assert alice.call("POST", f"/api/instances/{a['id']}/save")[0] == 202
    (save,) = [m for m in world.node_messages(queue) if m.TYPE == "save_instance"]
    pushed = save.image.rsplit(":", 1)[0] + "@sha256:" + "ab" * 32  # as the node reports it
    world.events(_state(node_id, a["id"], "saved", image=pushed))
    status, images = alice.call("GET", "/api/images")
    saved = next(i for i in images["images"] if i["owner"] == "alice")
    assert alice.call("POST", f"/api/images/{saved['id']}/share", {"username": "bob"})[0] == 200
    assert any(i["id"] == saved["id"] for i in bob.call("GET", "/api/images")[1]["images"])
    assert alice.call("DELETE", f"/api/images/{saved['id']}")[0] == 204
    assert alice.call("DELETE", f"/api/instances/{a['id']}")[0] == 204
    status, listed = anonymous.call("GET", "/api/revocations")  # what a starting router reads
    assert status == 200 and listed["revocations"], listed

    # Instance B fails on the node: revoked.
    status, b = alice.call("POST", "/api/instances", {"image_id": image["id"],
                                                      "cluster_id": cluster_id})
    assert status == 202, b
    world.events(_state(node_id, b["id"], "failed", reason="pull failed"))
    assert alice.call("POST", f"/api/instances/{b['id']}/discard")[0] == 202

    # Instance C waits while every node is drained; the reaper places it once one is back.
    assert admin.call("POST", f"/api/nodes/{node_id}/drain")[0] == 200
    status, c = bob.call("POST", "/api/instances", {"image_id": image["id"],
                                                    "cluster_id": cluster_id})
    assert status == 202 and c["state"] == "pending", c
    assert admin.call("POST", f"/api/nodes/{node_id}/activate")[0] == 200
    world.events(_heartbeat(node_id, []))
    world.reap()
    assert bob.call("GET", f"/api/instances/{c['id']}")[1]["state"] == "scheduled"
    # Its start is lost: past the grace period, node-1's heartbeat (which does not hold it)
    # has the events function send it again.
    admin_svc.instances.table.update({"instance_id": c["id"]}, "SET updated_at = :t",
                                     vals={":t": "2000-01-01T00:00:00.000Z"})
    world.node_messages(queue)
    world.events(_heartbeat(node_id, [], holds=[]))
    assert "start_instance" in [m.TYPE for m in world.node_messages(queue)]
    world.events(_state(node_id, c["id"], "starting"))

    # node-1 goes silent: the reaper fails its live instances and tells the node.
    admin_svc.nodes.nodes.update({"node_id": node_id}, "SET last_heartbeat = :t",
                                 vals={":t": 0})
    assert world.reap()["standby"] == "on"  # node-2 is still there
    assert bob.call("GET", f"/api/instances/{c['id']}")[1]["state"] == "failed"
    assert admin.call("POST", f"/api/nodes/{other_node['node_id']}/decommission")[0] == 200
    assert bob.call("POST", "/api/logout")[0] == 204

    # Nothing left to run: the reaper turns the events trigger and its own schedule off.
    assert world.reap()["standby"] == "off"
    rule = world.endpoint.client("events").describe_rule(Name=world.env["DIT4C_REAPER_RULE"])
    mapping = world.endpoint.client("lambda").get_event_source_mapping(
        UUID=world.stack.function_environments["ReaperFunction"]["DIT4C_EVENTS_MAPPING"])
    assert (rule["State"], mapping["State"]) == ("DISABLED", "Disabled")


@pytest.fixture(scope="module")
def scenario(world: World) -> World:
    _scenario(world)
    return world


def test_every_call_of_every_function_is_allowed_by_its_own_policies(scenario: World):
    denied = [f"{d.principal}: {d.action} on {d.resource}" for d in scenario.gate.denied()]
    assert not denied, "template.yaml does not allow:\n" + "\n".join(sorted(set(denied)))
    for name in FUNCTIONS:  # each function really ran under its own role
        assert scenario.gate.allowed_by(name), f"{name} made no call through the gate"


@pytest.mark.parametrize("function", FUNCTIONS)
def test_nothing_is_allowed_that_the_function_does_not_use(scenario: World, function: str):
    unused = unused_grants(scenario.policies[function], scenario.stack,
                           scenario.gate.allowed_by(function))
    assert not unused, f"{function}'s policies allow what it never does:\n" + "\n".join(unused)


def test_a_call_the_template_does_not_allow_fails_naming_the_action(world: World):
    """The template of the original issue: the API's health check reads the events queue."""
    narrower = replace(function_policies(Template.load())["ApiFunction"],
                       function="NarrowerApiFunction")
    for document in narrower.inline.values():
        document["Statement"] = [s for s in document["Statement"]
                                 if s.get("Action") != "sqs:GetQueueAttributes"]
    credentials = function_credentials(world.endpoint, world.stack, narrower)
    config = Config.from_env(function_environment(world.stack, world.endpoint))
    session = boto3.session.Session(aws_access_key_id=credentials["AWS_ACCESS_KEY_ID"],
                                    aws_secret_access_key=credentials["AWS_SECRET_ACCESS_KEY"],
                                    aws_session_token=credentials["AWS_SESSION_TOKEN"],
                                    region_name=REGION)
    before = len(world.gate.denied())
    report = Services.build(config, Clients(config, session=session)).health()
    assert report.dependencies["sqs"].startswith("error")
    (denial,) = world.gate.denied()[before:]
    assert denial.action == "sqs:GetQueueAttributes"
    assert denial.resource.endswith("-EventsQueue")
