"""Outgoing messages: commands to a node's queue (SQS) and revocations to edge routers (SNS)."""

from __future__ import annotations

import logging
from typing import Any

from protocol.messages import Message, Revocation

log = logging.getLogger("dit4c.control_plane.messaging")


class Messenger:
    """``send`` puts one command on a node's queue; ``revoke`` tells every edge router."""

    def __init__(self, sqs: Any, sns: Any, revocations_topic_arn: str) -> None:
        self.sqs = sqs
        self.sns = sns
        self.topic = revocations_topic_arn

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
        message = Revocation(instance_id=instance_id, hostname=hostname, reason=reason)
        self.sns.publish(TopicArn=self.topic, Message=message.encode())
        log.info("revoked %s: %s", instance_id, reason)
