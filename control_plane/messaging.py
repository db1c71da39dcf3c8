"""Outgoing messages: commands to a node's queue (SQS) and revocations to edge routers (SNS,
and the revocations list a starting router reads: :mod:`control_plane.revocations`)."""

from __future__ import annotations

import logging
from typing import Any

from control_plane.revocations import Revocations
from protocol.messages import Message, Revocation, sent_time

log = logging.getLogger("dit4c.control_plane.messaging")


class Messenger:
    """``send`` puts one command on a node's queue; ``revoke`` tells every edge router."""

    def __init__(self, sqs: Any, sns: Any, revocations_topic_arn: str,
                 revocations: Revocations) -> None:
        self.sqs = sqs
        self.sns = sns
        self.topic = revocations_topic_arn
        self.revocations = revocations

    def send(self, queue_url: str, message: Message) -> None:
        """Put ``message`` on a node's queue. A decommissioned node's queue is gone: there is
        nobody left to tell, which is not an error."""
        name = queue_url.rsplit("/", 1)[-1]
        try:
            self.sqs.send_message(QueueUrl=queue_url, MessageBody=message.encode())
        except self.sqs.exceptions.QueueDoesNotExist:
            log.info("not sent %s %s: queue %s is gone (node decommissioned)", message.TYPE,
                     message.id, name)
            return
        log.info("sent %s %s to %s", message.TYPE, message.id, name)

    def revoke(self, instance_id: str, hostname: str, reason: str) -> None:
        """Tokens for ``hostname`` issued until now stop working on every router: written to
        the list first (a router starting meanwhile reads it), then published."""
        message = Revocation(instance_id=instance_id, hostname=hostname, reason=reason)
        self.revocations.record(hostname, sent_time(message).timestamp())
        self.sns.publish(TopicArn=self.topic, Message=message.encode())
        log.info("revoked %s: %s", instance_id, reason)
