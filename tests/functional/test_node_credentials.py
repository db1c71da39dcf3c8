"""Credentials and queues against the real control plane (moto server): the node proves itself
with its own JWT, holds short-lived STS credentials, refreshes them before they expire, and
talks to SQS with them, keeping a message hidden while the work on it lasts."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime

import aiohttp
import pytest

from node_daemon.credentials import CredentialBroker
from node_daemon.errors import PortalError, QueueError
from node_daemon.portal import PortalClient
from node_daemon.queues import NodeQueues, Received, VisibilityKeeper
from protocol.messages import InstanceStateEvent, StopInstance, decode
from protocol.tokens import SigningKey
from tests.support.control_plane import ControlPlane, control_plane


@pytest.fixture(scope="module")
def portal() -> Iterator[ControlPlane]:
    # Command queues hide a received message for 2 s only (the real ones: 60 s).
    with control_plane(visibility_timeout=2) as plane:
        yield plane


@pytest.fixture
async def client(portal: ControlPlane) -> AsyncIterator[PortalClient]:
    async with aiohttp.ClientSession() as session:
        yield PortalClient(portal.url, session)


async def enrol(client: PortalClient, portal: ControlPlane) -> tuple[str, SigningKey]:
    key = SigningKey.generate()
    enrolment = await client.enroll(join_token=portal.new_join_token(), key=key, name="n",
                                    cpu=1, memory_mb=512)
    await asyncio.to_thread(portal.enrolled, enrolment.node_id)
    return enrolment.node_id, key


async def test_credentials_need_the_nodes_own_key(client: PortalClient, portal: ControlPlane):
    node_id, key = await enrol(client, portal)
    creds = await client.credentials(node_id, key)
    assert creds.queue_url == portal.queue_url(node_id)
    assert creds.endpoint_url == portal.aws.url
    assert creds.expiration > datetime.now(UTC)
    # The attack: another key claiming to be this node.
    with pytest.raises(PortalError) as refused:
        await client.credentials(node_id, SigningKey.generate())
    assert refused.value.status == 401 and refused.value.permanent
    assert "unknown key" in str(refused.value)


async def test_broker_refreshes_before_expiry(client: PortalClient, portal: ControlPlane):
    node_id, key = await enrol(client, portal)
    now = [datetime.now(UTC).timestamp()]
    broker = CredentialBroker(lambda: client.credentials(node_id, key), clock=lambda: now[0])
    first = await broker.current()
    assert await broker.current() is first
    assert broker.fetches == 1
    # An hour's credentials are replaced 5 minutes (the largest margin) before they expire.
    now[0] = first.expiration.timestamp() - 301
    assert await broker.current() is first
    now[0] = first.expiration.timestamp() - 299
    second = await broker.current()
    assert second is not first and broker.fetches == 2
    assert second.expiration > first.expiration or second.session_token != first.session_token


async def test_broker_retries_after_a_failed_fetch(client: PortalClient, portal: ControlPlane):
    node_id, key = await enrol(client, portal)
    broker = CredentialBroker(lambda: client.credentials(node_id, key))
    with portal.outage():
        with pytest.raises(PortalError) as unavailable:
            await broker.current()
        # Refused, or (over a connection kept alive from before) a 5xx: worth retrying.
        assert not unavailable.value.permanent
    assert (await broker.current()).queue_url == portal.queue_url(node_id)


async def test_queues_with_broker_credentials(client: PortalClient, portal: ControlPlane):
    node_id, key = await enrol(client, portal)
    queues = NodeQueues(CredentialBroker(lambda: client.credentials(node_id, key)))
    command = StopInstance(instance_id="abc")
    await asyncio.to_thread(portal.send, node_id, command)
    received = await queues.receive(wait_seconds=1)
    assert [decode(r.body) for r in received] == [command]
    await queues.delete(received[0].receipt)
    assert await queues.receive(wait_seconds=0) == []
    event = InstanceStateEvent(node_id=node_id, instance_id="abc", state="stopped")
    await queues.send_event(event)
    answer = portal.sqs.receive_message(QueueUrl=portal.events_queue_url, WaitTimeSeconds=1)
    assert [decode(m["Body"]) for m in answer["Messages"]] == [event]


async def test_queue_errors_name_the_queue(client: PortalClient, portal: ControlPlane):
    node_id, key = await enrol(client, portal)
    queues = NodeQueues(CredentialBroker(lambda: client.credentials(node_id, key)))
    portal.sqs.delete_queue(QueueUrl=portal.queue_url(node_id))
    with pytest.raises(QueueError) as failed:
        await queues.receive(wait_seconds=0)
    assert portal.queue_url(node_id) in str(failed.value)


def visible_ids(portal: ControlPlane, node_id: str) -> set[str]:
    """Instance ids of the commands another receiver sees now (without hiding them)."""
    answer = portal.sqs.receive_message(QueueUrl=portal.queue_url(node_id), WaitTimeSeconds=1,
                                        MaxNumberOfMessages=10, VisibilityTimeout=0)
    return {instance_of(m["Body"]) for m in answer.get("Messages", [])}


def instance_of(body: str) -> str:
    command = decode(body)
    assert isinstance(command, StopInstance)
    return command.instance_id


async def test_a_message_in_hand_stays_hidden_until_the_work_ends(client: PortalClient,
                                                                  portal: ControlPlane):
    node_id, key = await enrol(client, portal)
    queues = NodeQueues(CredentialBroker(lambda: client.credentials(node_id, key)))
    assert await queues.visibility_timeout() == 2
    for instance_id in ("held", "loose"):
        await asyncio.to_thread(portal.send, node_id, StopInstance(instance_id=instance_id))
    received: dict[str, Received] = {}
    while len(received) < 2:
        for r in await queues.receive(wait_seconds=1):
            received[instance_of(r.body)] = r
    seen: set[str] = set()
    async with VisibilityKeeper(queues).holding(received["held"]):
        # Three timeouts' worth of work: the message not held comes back, the held one not.
        until = time.monotonic() + 6
        while time.monotonic() < until:
            seen |= await asyncio.to_thread(visible_ids, portal, node_id)
    assert seen == {"loose"}
    # The work is over: extending stops, and the held message comes back as any other.
    until = time.monotonic() + 6
    while "held" not in seen and time.monotonic() < until:
        seen |= await asyncio.to_thread(visible_ids, portal, node_id)
    assert "held" in seen
