"""The served OpenAPI document and the code accept the same request bodies.

For every operation that takes a body, ``GET /api/openapi.json`` (the Chalice app on moto) gives
its schema; schemathesis generates bodies inside it, and each generated body is sent as it is and
changed one property at a time to values just inside and just outside each limit (maximum and
minimum lengths, numeric bounds, item counts), to pattern violations, other JSON types, null, and
with the property left out. An independent validator (``jsonschema``, over the document with
OpenAPI 3.0's ``nullable`` and ECMA-262's ``$``) says which side of the document each body is on;
the API must agree: a body the document admits is never refused with 400 (it may still be 404,
401, 409 ... for reasons of state), and a body it refuses gets 400 naming the property.

Two rules are about more than a body's shape and are fixed here: a node's public key must be a
key (so the enrolment bodies carry a real one), and ids in paths name nothing (so state checks
answer 404, never 400).
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest
import schemathesis
from chalice.test import Client
from hypothesis import HealthCheck, given, settings

from control_plane.app import REQUEST_BODIES, app
from control_plane.web import MAX_BODY_BYTES
from protocol.tokens import SigningKey

from .conftest import CPClient, cp_module_services

PASSWORD = "contract-admin-1"
PUBLIC_JWK = SigningKey.generate().public_jwk()
OPERATIONS = sorted(REQUEST_BODIES)


@pytest.fixture(scope="module")
def contract() -> Iterator[tuple[CPClient, dict[str, Any]]]:
    with cp_module_services("ct") as svc, Client(app) as client:
        svc.accounts.set_password("admin", PASSWORD, admin=True)
        browser = CPClient(client)
        assert browser.login("admin", PASSWORD).status_code == 200
        served = browser.get("/api/openapi.json")
        assert served.status_code == 200
        yield browser, served.json


def test_every_operation_with_a_body_is_checked(contract: tuple[CPClient, dict[str, Any]]
                                                ) -> None:
    _, doc = contract
    with_body = {(method.upper(), path) for path, ops in doc["paths"].items()
                 for method, op in ops.items() if "requestBody" in op}
    assert with_body == set(OPERATIONS)


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("method", "path"), OPERATIONS)
def test_document_and_code_accept_the_same_bodies(
        contract: tuple[CPClient, dict[str, Any]], method: str, path: str) -> None:
    browser, doc = contract
    components = doc["components"]["schemas"]
    body_schema = doc["paths"][path][method.lower()]["requestBody"]["content"][
        "application/json"]["schema"]
    validator = jsonschema.Draft4Validator(_json_schema(body_schema, components))
    declared = _json_schema(body_schema, components)
    operation = schemathesis.openapi.from_dict(doc)[path][method]
    url = path.replace("{instance_id}", "0nothing").replace("{image_id}", "0nothing")
    pattern_refused: set[str] = set()

    def check(name: str, label: str, body: dict[str, Any], expect_inside: bool | None) -> None:
        inside = validator.is_valid(body)
        if expect_inside is not None:  # a boundary value: the test knows its side
            assert inside == expect_inside, (name, label, body)
        raw = json.dumps(body).encode()
        if len(raw) > MAX_BODY_BYTES:
            return  # 413 before any field is looked at
        answer = browser.request(method, url, raw=raw)
        assert answer.status_code < 500, (name, label, body, answer.json)
        if inside:
            assert answer.status_code != 400, (name, label, body, answer.json)
        else:
            assert answer.status_code == 400, (name, label, body, answer.json)
            assert repr(name) in answer.json["error"]["message"], (name, label, answer.json)

    @settings(max_examples=5, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy())
    def run(case: Any) -> None:
        body = copy.deepcopy(case.body)
        if "public_jwk" in declared["properties"]:
            body["public_jwk"] = PUBLIC_JWK
        check("", "as generated", body, True)
        for name, prop in declared["properties"].items():
            without = {k: v for k, v in body.items() if k != name}
            check(name, "left out", without, name not in declared.get("required", []))
            for label, value, side in _near_limits(prop, body.get(name)):
                changed = {**body, name: value}
                check(name, label, changed, side)
                if label == "pattern" and not validator.is_valid(changed):
                    pattern_refused.add(name)

    run()
    patterned = {n for n, p in declared["properties"].items() if "pattern" in p}
    assert pattern_refused == patterned, "every pattern was also tried from outside"


Near = Iterator[tuple[str, Any, bool | None]]
"""``(label, value, inside?)``; ``None``: the validator decides (pattern candidates, types)."""


def _near_limits(prop: dict[str, Any], value: Any) -> Near:
    """Values around each limit of one property, then values of other JSON types and null."""
    kind = prop["type"][0] if isinstance(prop["type"], list) else prop["type"]
    near, others = {"string": (_near_text, [1, True, ["a"], {}]),
                    "integer": (_near_number, ["1", True, [1], 1.5]),
                    "number": (_near_number, ["1", True, [1]]),
                    "boolean": (None, ["true", 1, 0]),
                    "array": (_near_items, ["a", {}, 1]),
                    "object": (None, [[], "a", 1])}[kind]
    if near is not None:
        yield from near(prop, value)
    for other in [*others, None]:
        yield f"type {type(other).__name__}", other, None


def _near_text(prop: dict[str, Any], value: Any) -> Near:
    text = value if isinstance(value, str) and value else "a"
    if "maxLength" in prop:
        yield "maxLength", _resize(text, prop["maxLength"]), None
        yield "maxLength + 1", _resize(text, prop["maxLength"] + 1), False
    if "minLength" in prop:
        yield "minLength", _resize(text, prop["minLength"]), None
        yield "minLength - 1", _resize(text, prop["minLength"] - 1), False
    if "pattern" in prop:
        for candidate in (" ", " " + text, text + " ", "-" + text, text + "\n", "\u00c4" + text):
            yield "pattern", candidate, None


def _near_number(prop: dict[str, Any], value: Any) -> Near:
    def step(x: float, direction: int) -> float:
        if prop["type"] == "integer":
            return x + direction
        return math.nextafter(x, direction * math.inf)

    if "minimum" in prop:
        yield "minimum", prop["minimum"], True
        yield "below minimum", step(prop["minimum"], -1), False
    if "maximum" in prop:
        yield "maximum", prop["maximum"], True
        yield "above maximum", step(prop["maximum"], 1), False


def _near_items(prop: dict[str, Any], value: Any) -> Near:
    items = value if isinstance(value, list) and value else ["a"]
    if "maxItems" in prop:
        most = prop["maxItems"]
        yield "maxItems", (items * most)[:most], True
        yield "maxItems + 1", (items * (most + 1))[:most + 1], False
    for label, item, side in _near_limits(prop["items"], items[0]):
        yield f"items {label}", [item], side


def _resize(text: str, length: int) -> str:
    return text[:length] if len(text) >= length else text + text[-1] * (length - len(text))


def _json_schema(node: Any, components: dict[str, Any]) -> Any:
    """OpenAPI 3.0 -> JSON Schema for the validator: ``$ref`` inlined, ``nullable`` as a type,
    ECMA-262's ``$`` (the very end) where Python's would also take a trailing newline."""
    if isinstance(node, list):
        return [_json_schema(v, components) for v in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        return _json_schema(components[node["$ref"].rsplit("/", 1)[1]], components)
    out = {k: _json_schema(v, components) for k, v in node.items()
           if k not in ("nullable", "description")}
    if node.get("nullable"):
        out["type"] = [node["type"], "null"]
    if isinstance(node.get("pattern"), str) and node["pattern"].endswith("$"):
        out["pattern"] = node["pattern"][:-1] + r"\Z"
    return out
