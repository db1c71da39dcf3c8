"""Control plane measurements: cold-start import time and DynamoDB calls per API request.

1. Import time of ``control_plane.app`` in a fresh interpreter (a proxy for a Lambda cold start;
   goal < 300 ms), against ``python -c pass`` (the interpreter alone), median of N runs.
2. DynamoDB calls per API request, counted by a botocore ``before-call.dynamodb`` hook on the
   session every client is made from, over moto with the tables of ``template.yaml``. Any Scan on
   a request path is reported (there must be none; ``GET /api/clusters`` is the one admin listing
   that reads the small clusters table whole).

Run: ``.venv/bin/python -m bench.control_plane_bench [--runs N]``.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

import boto3
from chalice.test import Client
from moto import mock_aws

from control_plane import services
from control_plane.app import app
from control_plane.aws import Clients
from control_plane.bodies import NewImage
from control_plane.bootstrap import ensure_local_defaults
from control_plane.config import Config
from infra.local.aws import AwsEndpoint
from infra.local.provision import Provisioner
from infra.local.template import Template
from protocol.messages import InstanceStateEvent
from protocol.tokens import SigningKey, node_claims

ROUTE_BUDGET = 300.0


def _time(code: str, runs: int) -> tuple[float, float]:
    """Median (wall ms, CPU ms) of ``python -c code``; CPU time (user + sys of the child) is
    what a shared, busy machine distorts least."""
    walls, cpus = [], []
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ})
        walls.append((time.perf_counter() - start) * 1000)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append((after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) * 1000)
    return statistics.median(walls), statistics.median(cpus)


def import_times(runs: int) -> dict[str, tuple[float, float]]:
    return {
        "python -c pass": _time("pass", runs),
        "import chalice.app (the framework alone)": _time("import chalice.app", runs),
        "import control_plane.app": _time("import control_plane.app", runs),
        "app + domain modules + boto3 (first request)": _time(
            "import control_plane.app, control_plane.services, boto3", runs),
    }


def dynamodb_calls() -> list[tuple[str, int, dict[str, int]]]:
    os.environ.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                       "AWS_DEFAULT_REGION": "us-east-1"})
    counts: collections.Counter[str] = collections.Counter()

    def count(event_name: str, **_: Any) -> None:
        counts[event_name.rsplit(".", 1)[-1]] += 1

    session = boto3.session.Session(region_name="us-east-1")
    session.events.register("before-call.dynamodb", count)
    results: list[tuple[str, int, dict[str, int]]] = []
    with mock_aws():
        env = Provisioner(AwsEndpoint(None), f"bench{uuid.uuid4().hex[:6]}").provision(
            Template.load(), {"PortalUrl": "http://portal.test", "RouterDomain": "apps.test",
                              "RouterTunnelUrls": "ws://router.test/.dit4c/tunnel"}).environment
        config = Config.from_env(env)
        svc = services.Services.build(config, Clients(config, session=session))
        services.use(svc)
        local = ensure_local_defaults("bench-password-1", [
            NewImage(name="Tool", image="tool:1", port=80, cpu=0.5, memory_mb=256)], svc)
        key = SigningKey.generate()
        with Client(app) as client:
            headers = {"content-type": "application/json"}

            def call(label: str, method: str, path: str, body: Any = None,
                     extra: dict[str, str] | None = None) -> Any:
                counts.clear()
                response = client.http.request(method, path, headers={**headers, **(extra or {})},
                                               body=json.dumps(body).encode() if body else b"")
                assert response.status_code < 400, (label, response.body)
                results.append((label, sum(counts.values()), dict(counts)))
                return json.loads(response.body) if response.body else None

            def event(label: str, action: Callable[[], Any]) -> None:
                counts.clear()
                action()
                results.append((label, sum(counts.values()), dict(counts)))

            node = call("POST /api/nodes/enroll", "POST", "/api/nodes/enroll", {
                "join_token": local.join_token, "public_jwk": key.public_jwk(), "name": "n1",
                "cpu": 4, "memory_mb": 4096})
            call("POST /api/nodes/{id}/credentials", "POST",
                 f"/api/nodes/{node['node_id']}/credentials",
                 extra={"authorization": "Bearer " + key.sign(node_claims(
                     node_id=node["node_id"]))})
            counts.clear()
            login = client.http.post("/api/login", headers=headers, body=json.dumps(
                {"username": "admin", "password": "bench-password-1"}).encode())
            results.append(("POST /api/login (scrypt)", sum(counts.values()), dict(counts)))
            cookie = login.headers["Set-Cookie"].split(";", 1)[0]
            headers.update({"cookie": cookie,
                            "x-csrf-token": json.loads(login.body)["csrf_token"]})
            call("GET /api/me", "GET", "/api/me")
            images = call("GET /api/images", "GET", "/api/images")["images"]
            inst = call("POST /api/instances (launch + place)", "POST", "/api/instances",
                        {"image_id": images[0]["id"]})
            call("GET /api/instances", "GET", "/api/instances")
            call("GET /api/instances/{id}", "GET", f"/api/instances/{inst['id']}")
            event("on_event instance_state running", lambda: svc.events.handle(
                InstanceStateEvent(node_id=node["node_id"], instance_id=inst["id"],
                                   state="running")))
            call("POST /api/instances/{id}/stop", "POST", f"/api/instances/{inst['id']}/stop")
            call("GET /api/clusters/{id}/nodes", "GET", "/api/clusters/default/nodes")
            call("GET /api/clusters (admin)", "GET", "/api/clusters")
            call("GET /.well-known/jwks.json", "GET", "/.well-known/jwks.json")
        services.use(None)
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=9)
    args = parser.parse_args()
    times = import_times(args.runs)
    base_wall, base_cpu = times["python -c pass"]
    print(f"== import time (median of {args.runs} fresh interpreters; wall / CPU)")
    for label, (wall, cpu) in times.items():
        extra = "" if label == "python -c pass" else \
            f"  (+{wall - base_wall:.0f} / +{cpu - base_cpu:.0f} ms over bare python)"
        print(f"{label:<46} {wall:6.0f} / {cpu:6.0f} ms{extra}")
    own = times["import control_plane.app"][1] - base_cpu
    print(f"cold-start proxy: {own:.0f} ms CPU of imports (goal < {ROUTE_BUDGET:.0f} ms): "
          f"{'OK' if own < ROUTE_BUDGET else 'OVER'}")
    print("\n== DynamoDB calls per request")
    scans = []
    for label, total, detail in dynamodb_calls():
        ops = ", ".join(f"{k} {v}" for k, v in sorted(detail.items()))
        print(f"{label:<55} {total:3d}  {ops}")
        if "Scan" in detail:
            scans.append(label)
    print("Scan on a request path:", ", ".join(scans) if scans else "none")


if __name__ == "__main__":
    main()
