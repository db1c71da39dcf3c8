"""Metrics on their own port, one access-log line per request, activity sent to the events
queue."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Iterator
from typing import Any

import aiohttp
import boto3
import pytest
from moto import mock_aws

from protocol.messages import InstanceActivity, decode
from protocol.tokens import SigningKey
from tests.support import router as harness
from tests.support.router_stack import HOST, INSTANCE, Stack, stack, upstream

__all__ = ["stack", "upstream"]


async def test_one_access_log_line_per_request(stack: Stack,
                                               caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="dit4c.router.access"):
        for path in ("/", "/headers?secret=token"):
            async with await stack.get(path) as response:
                await response.read()
        async with await stack.get("/", "nobody.example.org") as response:
            await response.read()
    lines = [r.getMessage() for r in caplog.records if r.name == "dit4c.router.access"]
    assert len(lines) == 3
    assert f"host={HOST} method=GET path=/ status=200" in lines[0]
    assert "path=/headers status=200" in lines[1] and "secret" not in lines[1]
    assert "status=404" in lines[2]


async def test_metrics_on_their_own_port(upstream: tuple[str, int]) -> None:
    key = SigningKey.generate()
    router = await harness.start_router(key, metrics_listen=("127.0.0.1", 0))
    links = harness.Links()
    try:
        await links.start([harness.tunnel_url(router)], token=harness.token(key, INSTANCE),
                          hostname=HOST, upstream=upstream)
        host, port = router.addresses[0]
        async with aiohttp.ClientSession() as client:
            for _ in range(3):
                async with client.get(f"http://{host}:{port}/", headers={"Host": HOST}) as r:
                    assert r.status == 200
            assert router.metrics_address is not None
            mhost, mport = router.metrics_address
            async with client.get(f"http://{mhost}:{mport}/metrics") as r:
                text = await r.text()
            # The public port does not serve metrics.
            async with client.get(f"http://{host}:{port}/metrics") as r:
                assert r.status == 404
        assert "dit4c_router_tunnels 1.0" in text
        assert 'dit4c_router_request_duration_seconds_count{status="200"} 3.0' in text
        assert "dit4c_router_bytes_sent_total" in text
    finally:
        await links.close()
        await router.stop()


@pytest.fixture
def sqs() -> Iterator[Any]:
    with mock_aws():
        yield boto3.client("sqs", region_name="us-east-1")


async def test_activity_is_reported_to_the_events_queue(sqs: Any,
                                                        upstream: tuple[str, int]) -> None:
    queue = sqs.create_queue(QueueName=f"events-{uuid.uuid4().hex}")["QueueUrl"]
    key = SigningKey.generate()
    router = await harness.start_router(key, sqs=sqs, events_queue_url=queue,
                                        activity_interval=0.2)
    links = harness.Links()
    try:
        await links.start([harness.tunnel_url(router)], token=harness.token(key, INSTANCE),
                          hostname=HOST, upstream=upstream)
        host, port = router.addresses[0]
        async with aiohttp.ClientSession() as client, \
                client.get(f"http://{host}:{port}/", headers={"Host": HOST}) as r:
            assert r.status == 200
        messages: list[dict[str, Any]] = []
        for _ in range(20):
            received = await asyncio.to_thread(sqs.receive_message, QueueUrl=queue,
                                               WaitTimeSeconds=1)
            messages += received.get("Messages", [])
            if messages:
                break
        assert len(messages) == 1
        activity = decode(messages[0]["Body"])
        assert isinstance(activity, InstanceActivity)
        assert activity.router_id == "test-router"
        assert list(activity.last_activity) == [INSTANCE]
        assert activity.last_activity[INSTANCE].endswith("Z")
        assert json.loads(messages[0]["Body"])["type"] == "instance_activity"
    finally:
        await links.close()
        await router.stop()


async def test_an_open_websocket_counts_as_activity(stack: Stack) -> None:
    """Hours in a notebook are one upgraded request: its traffic must keep the instance
    active even though no request completes."""
    async with stack.client.ws_connect(stack.base + "/ws", headers={"Host": HOST}) as ws:
        stack.router.routes.last_activity.clear()
        for i in range(8):
            await ws.send_str(f"typing {i}")
            await ws.receive_str(timeout=5)
            await asyncio.sleep(0.2)
        assert INSTANCE in stack.router.routes.last_activity
