"""The router's two queues: revocations in (SQS, fed by SNS raw delivery), activity out.

boto3 is blocking, so every call runs in a worker thread (``asyncio.to_thread``).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any

import boto3

from edge_router.routes import RouteTable
from protocol.errors import MessageError
from protocol.messages import InstanceActivity, Revocation, decode, sent_time

log = logging.getLogger("dit4c.router.queues")

ACTIVITY_BATCH = 1000
"""Instances per activity message (SQS messages are at most 256 KiB)."""
POLL_WAIT_SECONDS = 1
"""Long-poll wait: a revocation is applied within about a second of arriving."""


def sqs_client(endpoint_url: str | None) -> Any:
    return boto3.client("sqs", endpoint_url=endpoint_url)


class RevocationListener:
    """Applies :class:`protocol.messages.Revocation` messages to the route table."""

    def __init__(self, sqs: Any, queue_url: str, routes: RouteTable) -> None:
        self.sqs = sqs
        self.queue_url = queue_url
        self.routes = routes

    def apply(self, body: str) -> None:
        """Apply one message body; a bad message is logged and dropped (it cannot improve)."""
        try:
            message = decode(body)
        except MessageError as exc:
            log.warning("dropping a bad revocation message: %s", exc)
            return
        if not isinstance(message, Revocation):
            log.warning("dropping a %s message on the revocations queue", message.TYPE)
            return
        # Tokens issued up to the revocation's time are dead (its sent_at is the control
        # plane's clock, as is every token's iat: a token issued after it passes).
        sent = sent_time(message).timestamp()  # decode checked it is a time
        closed = self.routes.revoke(message.hostname, at=sent, reason=message.reason)
        log.info("revoked %s (%s): %d tunnel(s) closed", message.hostname, message.reason,
                 closed)

    async def run(self) -> None:
        while True:
            try:
                response = await asyncio.to_thread(
                    self.sqs.receive_message, QueueUrl=self.queue_url, MaxNumberOfMessages=10,
                    WaitTimeSeconds=POLL_WAIT_SECONDS)
            except Exception as exc:
                log.warning("cannot receive revocations: %s", exc)
                await asyncio.sleep(2)
                continue
            for entry in response.get("Messages", []):
                self.apply(entry["Body"])
                try:
                    await asyncio.to_thread(self.sqs.delete_message, QueueUrl=self.queue_url,
                                            ReceiptHandle=entry["ReceiptHandle"])
                except Exception as exc:
                    log.warning("cannot delete a revocation message: %s", exc)


class ActivityReporter:
    """Sends the last-activity time of every instance that had requests since the last report."""

    def __init__(self, sqs: Any, queue_url: str, routes: RouteTable, *, router_id: str,
                 interval: float) -> None:
        self.sqs = sqs
        self.queue_url = queue_url
        self.routes = routes
        self.router_id = router_id
        self.interval = interval

    def _message(self, activity: dict[str, float]) -> InstanceActivity:
        return InstanceActivity(router_id=self.router_id, last_activity={
            instance: datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds")
            .replace("+00:00", "Z") for instance, at in activity.items()})

    async def report(self) -> None:
        """Send what happened since the last report; on failure keep it for the next one."""
        activity, self.routes.last_activity = self.routes.last_activity, {}
        items = sorted(activity.items())
        for start in range(0, len(items), ACTIVITY_BATCH):
            batch = dict(items[start:start + ACTIVITY_BATCH])
            try:
                await asyncio.to_thread(self.sqs.send_message, QueueUrl=self.queue_url,
                                        MessageBody=self._message(batch).encode())
            except Exception:
                for instance, at in items[start:]:
                    newer = self.routes.last_activity.get(instance, 0.0)
                    self.routes.last_activity[instance] = max(at, newer)
                raise

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.report()
            except Exception as exc:
                log.warning("cannot report activity: %s", exc)
