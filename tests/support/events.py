"""Events as a node puts them on the events queue, in the Lambda SQS event the consumer gets.

A node signs each body with its enrolled key (``protocol.tokens.event_claims``) and sends the
signature as the message attribute ``protocol.messages.SIGNATURE_ATTRIBUTE``; Lambda hands the
consumer ``messageAttributes`` in this shape (``stringValue``), as the local stack's pump does.
``signer`` lets an attack sign as another node, or with another key.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from protocol.messages import SIGNATURE_ATTRIBUTE, Message
from protocol.tokens import SigningKey, event_claims


def record(body: str, signature: str | None = None) -> dict[str, Any]:
    """One SQS record as Lambda delivers it."""
    attributes = {} if signature is None else {
        SIGNATURE_ATTRIBUTE: {"stringValue": signature, "dataType": "String"}}
    return {"messageId": uuid.uuid4().hex, "receiptHandle": uuid.uuid4().hex, "body": body,
            "attributes": {}, "messageAttributes": attributes, "eventSource": "aws:sqs",
            "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:events",
            "awsRegion": "us-east-1"}


def sign(message: Message | str, key: SigningKey, node_id: str) -> tuple[str, str]:
    """``(body, signature)``: ``message`` signed by ``key`` as node ``node_id``."""
    body = message if isinstance(message, str) else message.encode()
    return body, key.sign(event_claims(node_id=node_id, body=body))


def signed_event(keys: Mapping[str, SigningKey], *messages: Message) -> dict[str, Any]:
    """An SQS event of ``messages``, each signed by the key of the node it names (a router's
    ``instance_activity`` names none and goes unsigned, as routers send it)."""
    return {"Records": [
        record(*sign(m, keys[node_id], node_id)) if (node_id := getattr(m, "node_id", None))
        else record(m.encode()) for m in messages]}
