"""The long-lived processes on the path keep their start-up heap out of full collections
(protocol.heap): real processes started as a node or a host starts them.

Why it is tested at the cause: a full collection stops the process's event loop for as long as
it walks the heap (measured: 36 ms in the router, 21 ms in the listener), the tail of every
message in flight meanwhile; a timed test of that tail would be flaky, the freeze is not.
"""

from __future__ import annotations

import re
import sys
import urllib.request

import pytest

from protocol import pod
from protocol.sandbox import ENV_SANDBOX
from tests.ports import free_port
from tests.support import router as harness
from tests.support.process import Process

pytestmark = pytest.mark.timeout(60)

STARTUP_OBJECTS = 10_000
"""Fewer than the imports alone make (the router: ~59,000, the listener: ~42,000)."""
FROZEN = r"start-up heap frozen: (\d+) objects"


def frozen_in_log(process: Process) -> int:
    return int(process.wait_for(FROZEN, 30).group(1))


def test_the_router_freezes_its_start_up_heap_and_says_so_in_its_metrics() -> None:
    metrics_port = free_port()
    router = Process([sys.executable, "-m", "edge_router"], env={
        "DIT4C_ROUTER_DOMAIN": harness.DOMAIN,
        "DIT4C_ROUTER_JWKS_URL": "http://127.0.0.1:9/.well-known/jwks.json",
        "DIT4C_ROUTER_LISTEN": f"127.0.0.1:{free_port()}",
        "DIT4C_ROUTER_METRICS_LISTEN": f"127.0.0.1:{metrics_port}"})
    try:
        assert frozen_in_log(router) > STARTUP_OBJECTS
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics",
                                    timeout=10) as response:
            metrics = response.read().decode()
        gauge = re.search(r"^dit4c_router_heap_frozen_objects (\S+)$", metrics, re.M)
        assert gauge is not None, metrics
        assert float(gauge.group(1)) > STARTUP_OBJECTS
    finally:
        router.stop()


def test_a_pooled_listener_freezes_its_heap_before_it_waits_for_a_bind() -> None:
    listener = Process([sys.executable, "-m", "helpers.listener"],
                       env={ENV_SANDBOX: "heap-test", pod.ENV_TUNNEL_TOKEN: ""})
    try:
        listener.wait_for("waiting for a bind", 30)
        assert frozen_in_log(listener) > STARTUP_OBJECTS
    finally:
        listener.stop()


def test_the_auth_helper_freezes_its_heap_once_it_listens() -> None:
    helper = Process([sys.executable, "-m", "helpers.auth"], env={
        pod.ENV_AUTH_LISTEN: "127.0.0.1:0", pod.ENV_AUTH_UPSTREAM: "http://127.0.0.1:9",
        pod.ENV_INSTANCE_ID: "heap", pod.ENV_PUBLIC_URL: "http://heap.dit4c.test",
        pod.ENV_OAUTH_CLIENT_ID: "instance-heap", pod.ENV_OAUTH_CLIENT_SECRET: "s" * 32,
        pod.ENV_OAUTH_AUTHORIZE_URL: "http://portal.dit4c.test/oauth/authorize",
        pod.ENV_OAUTH_TOKEN_URL: "http://127.0.0.1:9/oauth/token",
        pod.ENV_OAUTH_JWKS_URL: "http://127.0.0.1:9/.well-known/jwks.json"})
    try:
        helper.wait_for("auth helper listening", 30)
        assert frozen_in_log(helper) > STARTUP_OBJECTS
    finally:
        helper.stop()
