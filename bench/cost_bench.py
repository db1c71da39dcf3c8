"""What dit4c costs on AWS: billed calls counted against moto, times list prices.

Every AWS request reaches moto's server through a counting middleware, so each is counted by
service and operation whoever makes it (the control plane's functions, a node, a router).
Lambda invocations and API Gateway requests are counted where they happen. Measured, one at a
time, with the control plane in this process (the code Lambda runs):

- **one heartbeat cycle**: the node's ``SendMessage``, the event source mapping's receive and
  delete (the local stack's :class:`~infra.local.functions.SqsPump`, which does what Lambda's
  poller does per batch) and the events function's own calls;
- **one long-poll** of the node's command queue and of a router's revocations queue;
- **one credential refresh** (``POST /api/nodes/{id}/credentials``: API Gateway, Lambda, its calls);
- **one launch**: ``POST /api/instances``, the node's receive and delete of ``start_instance``,
  its ``starting`` and ``running`` reports through the events function, and three portal polls
  (``GET /api/instances``) while the user waits.

- **the reaper**: one run while a node is live (as every minute), and the run that finds
  nothing left and switches the events trigger and its schedule off (``control_plane/standby``).

Per idle hour = per cycle x cycles per hour at the defaults (heartbeat every 240 s, long-polls
of 20 s, credentials of 3600 s). Prices: us-east-1 list prices (``PRICES``), free tiers ignored;
the Lambda and EventBridge API calls that switch things are not billed. Costs that do not grow
with nodes (the reaper's schedule, the event source mapping's own polling of the events queue)
are printed apart: they are paid while any node is live, and not at all when nothing runs.

Run: ``.venv/bin/python -m bench.cost_bench``.
"""

from __future__ import annotations

import collections
import io
import json
import threading
import uuid
from collections.abc import Callable, Iterable
from typing import Any, Final
from urllib.parse import parse_qs

import boto3
from chalice.config import Config as ChaliceConfig

from control_plane import services
from control_plane.app import app, on_event
from control_plane.aws import Clients
from control_plane.bodies import NewImage
from control_plane.bootstrap import ensure_local_defaults
from control_plane.config import Config
from control_plane.services import Services
from infra.local.aws import LOCAL_ACCESS_KEY, LOCAL_SECRET_KEY
from infra.local.functions import SqsPump
from infra.local.moto_server import MotoServer
from infra.local.portal import PortalGateway
from infra.local.provision import Provisioner
from infra.local.template import Template
from protocol.messages import SIGNATURE_ATTRIBUTE, InstanceStateEvent, NodeHeartbeat
from protocol.tokens import SigningKey, event_claims, node_claims

PRICES: Final = {  # USD per unit, us-east-1 list prices
    "sqs": 0.40e-6,  # per request (standard queue)
    "sns": 0.50e-6,  # per publish
    "dynamodb_write": 0.625e-6,  # per write request unit (on demand)
    "dynamodb_read": 0.125e-6,  # per read request unit (on demand)
    "lambda_request": 0.20e-6,
    "lambda_gb_second": 0.0000133334,  # arm64
    "http_api": 1.00e-6,  # per request (first 300 M a month)
}
LAMBDA_GB: Final = 0.5
LAMBDA_SECONDS: Final = 0.05
"""Billed duration assumed per warm invocation (1 ms granularity; these handlers take ~10-50 ms)."""
HEARTBEAT_SECONDS: Final = 240
POLL_SECONDS: Final = 20
POLLERS: Final = 5
"""Lambda's SQS event source mapping long-polls with five pollers at once while it is on."""
MINUTES_A_MONTH: Final = 43200
CREDENTIAL_SECONDS: Final = 3600
_WRITES: Final = {"PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem"}
_TRANSACT_ITEM_UNITS: Final = 2  # transactions cost two units per item


class Counter:
    """WSGI middleware in front of moto: counts requests by (service, operation) and units."""

    def __init__(self) -> None:
        self.calls: collections.Counter[tuple[str, str]] = collections.Counter()
        self.units: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()

    def __call__(self, app: Callable[..., Iterable[bytes]]) -> Callable[..., Iterable[bytes]]:
        def counted(environ: dict[str, Any], start_response: Callable[..., Any]
                    ) -> Iterable[bytes]:
            length = int(environ.get("CONTENT_LENGTH") or 0)
            body = environ["wsgi.input"].read(length) if length else b""
            environ["wsgi.input"] = io.BytesIO(body)
            self._count(environ, body)
            return app(environ, start_response)

        return counted

    def _count(self, environ: dict[str, Any], body: bytes) -> None:
        authorization = environ.get("HTTP_AUTHORIZATION", "")
        service = authorization.split("Credential=", 1)[-1].split("/")[3] \
            if "Credential=" in authorization else "?"
        target = environ.get("HTTP_X_AMZ_TARGET")
        params: dict[str, Any] = {}
        if target:
            operation = target.rsplit(".", 1)[-1]
            params = json.loads(body or b"{}")
        else:
            operation = parse_qs(body.decode()).get("Action", ["?"])[0]
        with self._lock:
            self.calls[(service, operation)] += 1
            if service == "dynamodb":
                if operation == "TransactWriteItems":
                    items = len(params.get("TransactItems", []))
                    self.units["dynamodb_write"] += _TRANSACT_ITEM_UNITS * items
                elif operation in _WRITES:
                    self.units["dynamodb_write"] += 1
                else:
                    self.units["dynamodb_read"] += 1  # eventually consistent reads are half
            elif service in ("sqs", "sns"):
                self.units[service] += 1

    def take(self) -> tuple[collections.Counter[tuple[str, str]], collections.Counter[str]]:
        with self._lock:
            calls, units = self.calls, self.units
            self.calls, self.units = collections.Counter(), collections.Counter()
        return calls, units


def cost(units: collections.Counter[str], lambdas: int = 0, api: int = 0) -> float:
    total = sum(PRICES[k] * n for k, n in units.items())
    total += lambdas * (PRICES["lambda_request"]
                        + LAMBDA_GB * LAMBDA_SECONDS * PRICES["lambda_gb_second"])
    return total + api * PRICES["http_api"]


def main() -> None:  # noqa: PLR0915 - one measurement after another, printed as one table


    counter = Counter()
    server = MotoServer(wrap=counter)
    endpoint = server.start()
    try:
        stack = Provisioner(endpoint, f"cost{uuid.uuid4().hex[:6]}").provision(
            Template.load(), {"PortalUrl": "https://portal.test", "RouterDomain": "apps.test",
                              "RouterTunnelUrls": "wss://router.test/.dit4c/tunnel"})
        env = {**stack.environment, "DIT4C_AWS_ENDPOINT_URL": str(endpoint.url)}
        config = Config.from_env(env)
        session = boto3.session.Session(aws_access_key_id=LOCAL_ACCESS_KEY,
                                        aws_secret_access_key=LOCAL_SECRET_KEY,
                                        region_name="us-east-1")
        svc = Services.build(config, Clients(config, session=session))
        services.use(svc)
        defaults = ensure_local_defaults("cost-bench-password", [NewImage(
            name="Tool", image="tool:1", port=8080)])
        gateway = PortalGateway(app, ChaliceConfig.create(lambda_timeout=29))

        def api(method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
                ) -> dict[str, Any]:
            sent = {"content-type": "application/json", **(headers or {})}
            response: dict[str, Any] = gateway.handle_request(
                method, path, sent, None if body is None else json.dumps(body).encode())
            return response

        login = api("POST", "/api/login", {"username": "admin",
                                           "password": "cost-bench-password"})
        cookie = login["multiValueHeaders"]["Set-Cookie"][0].split(";")[0] \
            if login.get("multiValueHeaders") else login["headers"]["Set-Cookie"].split(";")[0]
        browser = {"cookie": cookie, "x-csrf-token": json.loads(login["body"])["csrf_token"]}
        key = SigningKey.generate()
        enrolled = json.loads(api("POST", "/api/nodes/enroll", {
            "join_token": defaults.join_token, "public_jwk": key.public_jwk(), "name": "n1",
            "cpu": 4, "memory_mb": 4096})["body"])
        node_id, node_queue = enrolled["node_id"], enrolled["queue_url"]
        sqs = endpoint.client("sqs")
        pump = SqsPump(stack.functions["EventsFunction"], on_event, sqs,
                       queue_url=config.events_queue_url, queue_arn=config.events_queue_arn,
                       batch_size=10, region="us-east-1")
        image_id = json.loads(api("GET", "/api/images", headers=browser)["body"])["images"][0]["id"]

        def report(message: Any) -> None:
            body = message.encode()  # signed, as the node sends it
            signature = key.sign(event_claims(node_id=node_id, body=body))
            sqs.send_message(QueueUrl=config.events_queue_url, MessageBody=body,
                             MessageAttributes={SIGNATURE_ATTRIBUTE: {
                                 "DataType": "String", "StringValue": signature}})
            assert pump.run_once(0) == 1

        rows: list[tuple[str, str, float]] = []
        counter.take()

        # One heartbeat cycle.
        report(NodeHeartbeat(node_id=node_id, version="bench", cpu_total=4, memory_mb_total=4096,
                             cpu_used=0, memory_mb_used=0, load=0, running=[]))
        calls, units = counter.take()
        heartbeat = cost(units, lambdas=1)
        rows.append(("heartbeat (node send, Lambda poller receive+delete, events function)",
                     _show(calls), heartbeat))
        # One long-poll (node or router: the same single ReceiveMessage).
        sqs.receive_message(QueueUrl=node_queue, WaitTimeSeconds=0)
        calls, units = counter.take()
        poll = cost(units)
        rows.append(("long-poll of its own queue (node, router)", _show(calls), poll))
        # One credential refresh.
        response = api("POST", f"/api/nodes/{node_id}/credentials", headers={
            "authorization": "Bearer " + key.sign(node_claims(node_id=node_id))})
        assert response["statusCode"] == 200, response
        calls, units = counter.take()
        refresh = cost(units, lambdas=1, api=1)
        rows.append(("node credential refresh", _show(calls) + ", 1 API request", refresh))
        # One launch.
        launched = api("POST", "/api/instances", {"image_id": image_id}, headers=browser)
        assert launched["statusCode"] == 202, launched
        instance = json.loads(launched["body"])["id"]
        got = sqs.receive_message(QueueUrl=node_queue, MaxNumberOfMessages=10)["Messages"]
        sqs.delete_message(QueueUrl=node_queue, ReceiptHandle=got[0]["ReceiptHandle"])
        for state in ("starting", "running"):
            report(InstanceStateEvent(node_id=node_id, instance_id=instance, state=state))
        for _ in range(3):
            api("GET", "/api/instances", headers=browser)
        calls, units = counter.take()
        launch = cost(units, lambdas=1 + 2 + 3, api=1 + 3)
        rows.append(("launch (API, start command, 2 state reports, 3 portal polls)",
                     _show(calls) + ", 4 API requests", launch))
        # The reaper, every minute while anything runs.
        assert svc.reaper.run()["standby"] == "on"
        calls, units = counter.take()
        reaper_run = cost(units, lambdas=1)
        rows.append(("reaper run while a node is live (every minute)",
                     _show(calls) + " (+ lambda:GetEventSourceMapping on AWS)", reaper_run))
        # Nothing left: the instance stopped, the node decommissioned. The run that sees it.
        assert api("POST", f"/api/instances/{instance}/stop", headers=browser)["statusCode"] == 202
        report(InstanceStateEvent(node_id=node_id, instance_id=instance, state="stopped"))
        assert api("POST", f"/api/nodes/{node_id}/decommission",
                   headers=browser)["statusCode"] == 200
        counter.take()
        assert svc.reaper.run()["standby"] == "off"
        calls, units = counter.take()
        settle = cost(units, lambdas=1)
        rows.append(("the reaper run that finds nothing and switches off (once)",
                     _show(calls) + " (+ lambda:Get/UpdateEventSourceMapping on AWS)", settle))
        idle_rule = endpoint.client("events").describe_rule(Name=config.reaper_rule)["State"]
    finally:
        services.use(None)
        server.reset()
        server.stop()

    def node_hour_at(beat_seconds: float) -> float:
        return (3600 / beat_seconds * heartbeat + 3600 / POLL_SECONDS * poll
                + 3600 / CREDENTIAL_SECONDS * refresh)

    node_hour = node_hour_at(HEARTBEAT_SECONDS)
    router_hour = 3600 / POLL_SECONDS * poll
    reaper_month = MINUTES_A_MONTH * reaper_run
    pollers_month = POLLERS * 60 / POLL_SECONDS * MINUTES_A_MONTH * PRICES["sqs"]
    print(f"{'measured':<72} {'USD':>10}  AWS calls")
    for what, shown, usd in rows:
        print(f"{what:<72} {usd:>10.2e}  {shown}")
    print()
    print(f"idle node-hour:   {node_hour:.2e} USD  -> idle node-month (730 h): "
          f"${node_hour * 730:.3f}  (goal <= $0.10)")
    print(f"  (with the former 30 s heartbeat: ${node_hour_at(30) * 730:.3f} a node-month)")
    print(f"idle router-hour: {router_hour:.2e} USD  -> router-month: ${router_hour * 730:.3f}")
    print(f"launch:           {launch:.2e} USD  (goal <= $0.001)")
    print(f"while any node is live (whatever their number): the reaper every minute "
          f"${reaper_month:.3f}/month (measured run x {MINUTES_A_MONTH}), Lambda's polling of "
          f"the events queue ~${pollers_month:.2f}/month ({POLLERS} pollers x {POLL_SECONDS} s "
          "long-polls, as AWS documents it; estimated: moto cannot show it)")
    print(f"nothing running (no live node, no instance in transition): the reaper's schedule "
          f"is {idle_rule} and the events trigger off: $0 a month beside storage")


def _show(calls: collections.Counter[tuple[str, str]]) -> str:
    return ", ".join(f"{service}:{op} x{n}" for (service, op), n in sorted(calls.items()))


if __name__ == "__main__":
    main()
