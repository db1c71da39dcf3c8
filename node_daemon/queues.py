"""The node's SQS queues: its own command queue (receive, delete, extend a message's visibility)
and the events queue (send, each event signed with the node's key: the queue is shared by every
node, so the control plane believes an event only with its sender's signature).

Every call takes the broker's current credentials, so a refresh takes effect on the next call;
boto3 runs in threads, never on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import boto3
import botocore.config
import botocore.exceptions

from node_daemon.credentials import CredentialBroker
from node_daemon.errors import QueueError
from node_daemon.portal import AwsCredentials
from node_daemon.threads import in_daemon_thread
from protocol.messages import SIGNATURE_ATTRIBUTE, Message
from protocol.tokens import SigningKey, event_claims

_BOTO_CONFIG = botocore.config.Config(
    connect_timeout=10, read_timeout=30, retries={"max_attempts": 2, "mode": "standard"})
_ERRORS = (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError)

log = logging.getLogger("dit4c.node.queues")


@dataclass(frozen=True)
class Received:
    body: str
    receipt: str
    message_id: str


class NodeQueues:
    """SQS access with credentials from ``broker``.

    :meth:`receive` long-polls the command queue for up to ``wait_seconds``; :meth:`delete`
    acknowledges one message; :meth:`extend` hides a received message for ``seconds`` more;
    :meth:`visibility_timeout` is the command queue's (read once); :meth:`send_event` puts one
    message on the events queue, signed by ``key`` as node ``node_id``. Each raises
    :class:`QueueError` on failure.
    """

    def __init__(self, broker: CredentialBroker, *, key: SigningKey, node_id: str) -> None:
        self._broker = broker
        self._key = key
        self._node_id = node_id
        self._client: Any = None
        self._client_key: str | None = None
        self._visibility: dict[str, int] = {}

    async def _sqs(self) -> tuple[Any, AwsCredentials]:
        try:
            creds = await self._broker.current()
        except Exception as exc:
            raise QueueError(f"no credentials: {exc}") from exc
        if self._client_key != creds.access_key_id:
            self._client = boto3.client(
                "sqs", region_name=creds.region, endpoint_url=creds.endpoint_url,
                aws_access_key_id=creds.access_key_id,
                aws_secret_access_key=creds.secret_access_key,
                aws_session_token=creds.session_token, config=_BOTO_CONFIG)
            self._client_key = creds.access_key_id
        return self._client, creds

    async def receive(self, wait_seconds: int, max_messages: int = 10) -> list[Received]:
        sqs, creds = await self._sqs()

        def call() -> Any:
            return sqs.receive_message(QueueUrl=creds.queue_url, WaitTimeSeconds=wait_seconds,
                                       MaxNumberOfMessages=max_messages)

        try:
            answer = await in_daemon_thread(call)
        except _ERRORS as exc:
            raise QueueError(f"receive from {creds.queue_url}: {exc}") from exc
        return [Received(m["Body"], m["ReceiptHandle"], m["MessageId"])
                for m in answer.get("Messages", [])]

    async def delete(self, receipt: str) -> None:
        sqs, creds = await self._sqs()
        try:
            await asyncio.to_thread(sqs.delete_message, QueueUrl=creds.queue_url,
                                    ReceiptHandle=receipt)
        except _ERRORS as exc:
            raise QueueError(f"deleting a message of {creds.queue_url}: {exc}") from exc

    async def extend(self, receipt: str, seconds: int) -> None:
        sqs, creds = await self._sqs()
        try:
            await asyncio.to_thread(sqs.change_message_visibility, QueueUrl=creds.queue_url,
                                    ReceiptHandle=receipt, VisibilityTimeout=seconds)
        except _ERRORS as exc:
            raise QueueError(f"extending a message of {creds.queue_url}: {exc}") from exc

    async def visibility_timeout(self) -> int:
        sqs, creds = await self._sqs()
        if creds.queue_url not in self._visibility:
            try:
                answer = await asyncio.to_thread(sqs.get_queue_attributes,
                                                 QueueUrl=creds.queue_url,
                                                 AttributeNames=["VisibilityTimeout"])
                seconds = int(answer["Attributes"]["VisibilityTimeout"])
            except (*_ERRORS, KeyError, ValueError) as exc:
                raise QueueError(f"visibility timeout of {creds.queue_url}: {exc!r}") from exc
            self._visibility[creds.queue_url] = seconds
        return self._visibility[creds.queue_url]

    async def send_event(self, message: Message) -> None:
        sqs, creds = await self._sqs()
        body = message.encode()
        signature = self._key.sign(event_claims(node_id=self._node_id, body=body))
        try:
            await asyncio.to_thread(
                sqs.send_message, QueueUrl=creds.events_queue_url, MessageBody=body,
                MessageAttributes={SIGNATURE_ATTRIBUTE: {"DataType": "String",
                                                         "StringValue": signature}})
        except _ERRORS as exc:
            raise QueueError(f"send to {creds.events_queue_url}: {exc}") from exc


class VisibilityKeeper:
    """Keeps messages in hand hidden from other receivers while the work on them lasts.

    Inside ``async with keeper.holding(received):`` the message's visibility is extended to the
    queue's whole visibility timeout every ``fraction`` of it (at least ``min_period`` seconds
    apart), so a long command (a big pull, a slow save) is not delivered again mid-work; on
    leaving, extending stops and the message is as the work left it (deleted, or visible again
    after the timeout for a retry). A failed extension is logged and tried again next period:
    at worst the command comes back, which is a duplicate the agent ignores.
    """

    def __init__(self, queues: NodeQueues, *, fraction: float = 1 / 3,
                 min_period: float = 1.0, retry_seconds: float = 10.0) -> None:
        self._queues = queues
        self._fraction = fraction
        self._min_period = min_period
        self._retry_seconds = retry_seconds

    @contextlib.asynccontextmanager
    async def holding(self, received: Received) -> AsyncIterator[None]:
        keeper = asyncio.create_task(self._keep(received))
        try:
            yield
        finally:
            keeper.cancel()
            # Its own cancellation is a result here; one of the caller's still propagates.
            await asyncio.gather(keeper, return_exceptions=True)

    async def _keep(self, received: Received) -> None:
        while True:
            try:
                timeout = await self._queues.visibility_timeout()
            except QueueError as exc:
                log.warning("cannot keep %s hidden (retrying in %.0f s): %s",
                            received.message_id, self._retry_seconds, exc)
                await asyncio.sleep(self._retry_seconds)
                continue
            await asyncio.sleep(max(self._min_period, timeout * self._fraction))
            try:
                await self._queues.extend(received.receipt, timeout)
            except QueueError as exc:
                log.warning("could not extend the visibility of %s: %s",
                            received.message_id, exc)
            else:
                log.debug("%s kept hidden for %d s more", received.message_id, timeout)
