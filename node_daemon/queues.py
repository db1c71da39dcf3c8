"""The node's SQS queues: its own command queue (receive, delete) and the events queue (send).

Every call takes the broker's current credentials, so a refresh takes effect on the next call;
boto3 runs in threads, never on the event loop.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import boto3
import botocore.config
import botocore.exceptions

from node_daemon.credentials import CredentialBroker
from node_daemon.errors import QueueError
from node_daemon.portal import AwsCredentials
from node_daemon.threads import in_daemon_thread
from protocol.messages import Message

_BOTO_CONFIG = botocore.config.Config(
    connect_timeout=10, read_timeout=30, retries={"max_attempts": 2, "mode": "standard"})
_ERRORS = (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError)


@dataclass(frozen=True)
class Received:
    body: str
    receipt: str
    message_id: str


class NodeQueues:
    """SQS access with credentials from ``broker``.

    :meth:`receive` long-polls the command queue for up to ``wait_seconds``; :meth:`delete`
    acknowledges one message; :meth:`send_event` puts one message on the events queue. Each
    raises :class:`QueueError` on failure.
    """

    def __init__(self, broker: CredentialBroker) -> None:
        self._broker = broker
        self._client: Any = None
        self._client_key: str | None = None

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

    async def send_event(self, message: Message) -> None:
        sqs, creds = await self._sqs()
        try:
            await asyncio.to_thread(sqs.send_message, QueueUrl=creds.events_queue_url,
                                    MessageBody=message.encode())
        except _ERRORS as exc:
            raise QueueError(f"send to {creds.events_queue_url}: {exc}") from exc
