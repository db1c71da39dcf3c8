"""control_plane.schema: one declaration gives both the parser and the OpenAPI schema."""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal

import pytest

from control_plane.errors import BadRequest
from control_plane.schema import NOT_BLANK, Limits, field, json_object, json_schema, parse


class Colour(StrEnum):
    RED = "red"
    BLUE = "blue"


@json_object
class Inner:
    size: int = field(minimum=1, maximum=3)


@json_object
class Outer:
    """An example body.

    Only the first paragraph becomes the description."""

    name: str = field(max_length=5, pattern=NOT_BLANK, says="a name", strip=True)
    colour: Colour = Colour.RED
    shade: Literal["light", "dark"] | None = None
    inner: Inner | None = None
    tags: list[str] = field(default_factory=list, max_items=2, items=Limits(max_length=3))
    extra: dict[str, Any] = field(default_factory=dict, description="anything")


def test_parse_gives_typed_values() -> None:
    body = parse(Outer, {"name": " ab ", "colour": "blue", "shade": "dark",
                         "inner": {"size": 2}, "tags": ["x"], "ignored": 1})
    assert body == Outer(name="ab", colour=Colour.BLUE, shade="dark", inner=Inner(size=2),
                         tags=["x"])
    assert parse(Outer, {"name": "a", "shade": None, "inner": None}) == Outer(name="a")


@pytest.mark.parametrize(("body", "names"), [
    ({}, "'name' is required"),
    ({"name": "  "}, "'name' must be a name"),
    ({"name": "abcdef"}, "'name' must be at most 5 characters"),
    ({"name": "a", "colour": "green"}, "'colour' must be one of 'red', 'blue'"),
    ({"name": "a", "colour": None}, "'colour' must not be null"),
    ({"name": "a", "shade": "grey"}, "'shade' must be one of 'light', 'dark'"),
    ({"name": "a", "inner": {"size": 4}}, "'size' must be an integer from 1 to 3"),
    ({"name": "a", "inner": []}, "'inner' must be a JSON object"),
    ({"name": "a", "tags": ["x", "y", "z"]}, "'tags' must be a list of at most 2 strings"),
    ({"name": "a", "tags": ["long"]}, "'tags' must be a list of at most 2 strings"),
    ({"name": "a", "extra": "x"}, "'extra' must be a JSON object"),
])
def test_parse_names_what_it_refuses(body: dict[str, Any], names: str) -> None:
    with pytest.raises(BadRequest, match=names):
        parse(Outer, body)


def test_json_schema_says_the_same() -> None:
    components: dict[str, Any] = {}
    assert json_schema(Outer, components) == {"$ref": "#/components/schemas/Outer"}
    assert components["Outer"] == {
        "type": "object", "description": "An example body.", "required": ["name"],
        "properties": {
            "name": {"type": "string", "maxLength": 5, "pattern": NOT_BLANK},
            "colour": {"type": "string", "enum": ["red", "blue"]},
            "shade": {"type": "string", "enum": ["light", "dark"], "nullable": True},
            "inner": {"allOf": [{"$ref": "#/components/schemas/Inner"}], "nullable": True},
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 3},
                     "maxItems": 2},
            "extra": {"type": "object", "description": "anything"}}}
    assert components["Inner"] == {
        "type": "object", "required": ["size"],
        "properties": {"size": {"type": "integer", "minimum": 1, "maximum": 3}}}
