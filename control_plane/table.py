"""A thin typed layer over one DynamoDB table (low-level client, plain Python values).

Items go in and come out as plain dicts: DynamoDB's ``Decimal`` numbers come back as ``int``
(or ``float`` when fractional), so nothing above this module sees DynamoDB types. A failed
condition raises :class:`ConditionFailed`, which callers turn into the error that fits.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping, Sequence
from decimal import Decimal
from typing import Any

Item = dict[str, Any]


@functools.cache
def _codecs() -> tuple[Any, Any]:
    # boto3 costs ~150 ms to import: pay it at the first item, not at the app's import.
    from boto3.dynamodb.types import TypeDeserializer, TypeSerializer  # noqa: PLC0415

    return TypeSerializer(), TypeDeserializer()


class ConditionFailed(Exception):
    """A conditional write (or one part of a transaction) found the item in another state."""


def _to_dynamo(value: Any) -> Any:
    if isinstance(value, float):
        return Decimal(str(value))
    if isinstance(value, dict):
        return {k: _to_dynamo(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_to_dynamo(v) for v in value]
    return value


def _from_dynamo(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {k: _from_dynamo(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_dynamo(v) for v in value]
    if isinstance(value, set):
        return sorted(_from_dynamo(v) for v in value)
    return value


def serialize(item: Mapping[str, Any]) -> dict[str, Any]:
    serializer = _codecs()[0]
    return {k: serializer.serialize(_to_dynamo(v)) for k, v in item.items()}


def deserialize(raw: Mapping[str, Any]) -> Item:
    deserializer = _codecs()[1]
    return {k: _from_dynamo(deserializer.deserialize(v)) for k, v in raw.items()}


def values(names: Mapping[str, Any]) -> dict[str, Any]:
    """``{":a": 1}`` -> DynamoDB attribute values."""
    return serialize(names)


class Table:
    """One table by name over a DynamoDB client; every call is one DynamoDB request."""

    def __init__(self, client: Any, name: str) -> None:
        self.client = client
        self.name = name

    def get(self, key: Mapping[str, Any], *, consistent: bool = True) -> Item | None:
        raw = self.client.get_item(TableName=self.name, Key=serialize(key),
                                   ConsistentRead=consistent).get("Item")
        return deserialize(raw) if raw else None

    def put(self, item: Mapping[str, Any], *, condition: str | None = None,
            names: Mapping[str, str] | None = None,
            vals: Mapping[str, Any] | None = None) -> None:
        kwargs: dict[str, Any] = {"TableName": self.name, "Item": serialize(item)}
        _conditional(kwargs, condition, names, vals)
        self._call(self.client.put_item, kwargs)

    def update(self, key: Mapping[str, Any], expression: str, *,
               condition: str | None = None, names: Mapping[str, str] | None = None,
               vals: Mapping[str, Any] | None = None) -> Item:
        kwargs: dict[str, Any] = {"TableName": self.name, "Key": serialize(key),
                                  "UpdateExpression": expression, "ReturnValues": "ALL_NEW"}
        _conditional(kwargs, condition, names, vals)
        response = self._call(self.client.update_item, kwargs)
        return deserialize(response.get("Attributes", {}))

    def delete(self, key: Mapping[str, Any], *, condition: str | None = None,
               names: Mapping[str, str] | None = None,
               vals: Mapping[str, Any] | None = None) -> Item | None:
        kwargs: dict[str, Any] = {"TableName": self.name, "Key": serialize(key),
                                  "ReturnValues": "ALL_OLD"}
        _conditional(kwargs, condition, names, vals)
        raw = self._call(self.client.delete_item, kwargs).get("Attributes")
        return deserialize(raw) if raw else None

    def query(self, key_condition: str, *, index: str | None = None,
              names: Mapping[str, str] | None = None, vals: Mapping[str, Any] | None = None,
              forward: bool = True, limit: int | None = None) -> Iterator[Item]:
        kwargs: dict[str, Any] = {"TableName": self.name,
                                  "KeyConditionExpression": key_condition,
                                  "ScanIndexForward": forward}
        if index:
            kwargs["IndexName"] = index
        if names:
            kwargs["ExpressionAttributeNames"] = dict(names)
        if vals:
            kwargs["ExpressionAttributeValues"] = values(vals)
        if limit:
            kwargs["Limit"] = limit
        count = 0
        while True:
            response = self.client.query(**kwargs)
            for raw in response.get("Items", []):
                yield deserialize(raw)
                count += 1
                if limit and count >= limit:
                    return
            start = response.get("LastEvaluatedKey")
            if not start:
                return
            kwargs["ExclusiveStartKey"] = start

    def batch_get(self, keys: Sequence[Mapping[str, Any]]) -> list[Item]:
        items: list[Item] = []
        for start in range(0, len(keys), 100):
            pending: dict[str, Any] = {
                self.name: {"Keys": [serialize(k) for k in keys[start:start + 100]]}}
            while pending:
                response = self.client.batch_get_item(RequestItems=pending)
                items += [deserialize(r) for r in response["Responses"].get(self.name, [])]
                pending = response.get("UnprocessedKeys") or {}
        return items

    def scan(self, *, consistent: bool = False) -> Iterator[Item]:
        """Only for the reaper, admin maintenance and small tables (the revocations list),
        never over a table that grows with use on a request path."""
        kwargs: dict[str, Any] = {"TableName": self.name, "ConsistentRead": consistent}
        while True:
            response = self.client.scan(**kwargs)
            for raw in response.get("Items", []):
                yield deserialize(raw)
            if not response.get("LastEvaluatedKey"):
                return
            kwargs["ExclusiveStartKey"] = response["LastEvaluatedKey"]

    # --- transactions -------------------------------------------------------------------

    def put_op(self, item: Mapping[str, Any], *, condition: str | None = None) -> dict[str, Any]:
        """One ``Put`` entry for :func:`transact`."""
        op: dict[str, Any] = {"TableName": self.name, "Item": serialize(item)}
        _conditional(op, condition, None, None)
        return {"Put": op}

    def update_op(self, key: Mapping[str, Any], expression: str, *,
                  condition: str | None = None, names: Mapping[str, str] | None = None,
                  vals: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """One ``Update`` entry for :func:`transact`."""
        op: dict[str, Any] = {"TableName": self.name, "Key": serialize(key),
                              "UpdateExpression": expression}
        _conditional(op, condition, names, vals)
        return {"Update": op}

    def _call(self, method: Any, kwargs: dict[str, Any]) -> Any:
        try:
            return method(**kwargs)
        except self.client.exceptions.ConditionalCheckFailedException:
            raise ConditionFailed(self.name) from None


def transact(client: Any, operations: list[dict[str, Any]]) -> None:
    """All or nothing; any failed condition raises :class:`ConditionFailed`."""
    try:
        client.transact_write_items(TransactItems=operations)
    except client.exceptions.TransactionCanceledException as exc:
        reasons = [r.get("Code") for r in exc.response.get("CancellationReasons", [])]
        if "ConditionalCheckFailed" in reasons:
            raise ConditionFailed(",".join(str(r) for r in reasons)) from None
        raise


def _conditional(kwargs: dict[str, Any], condition: str | None,
                 names: Mapping[str, str] | None, vals: Mapping[str, Any] | None) -> None:
    if condition:
        kwargs["ConditionExpression"] = condition
    if names:
        kwargs["ExpressionAttributeNames"] = dict(names)
    if vals:
        kwargs["ExpressionAttributeValues"] = values(vals)
