"""JSON bodies (requests and answers) typed once: a dataclass parses a body and describes it.

A body type is a frozen, keyword-only dataclass made by :func:`json_object`. Each field's Python
type is its JSON type (``str``, ``int``, ``float``, ``bool``, ``list[T]``, ``dict[str, T]``, a
``StrEnum`` or ``Literal`` for an enum, another such type for a nested object, ``T | None`` when
``null`` is allowed); its limits are the keywords of :func:`field` (``max_length``, ``pattern``,
``minimum`` ...). A field without a default is required. From that one declaration:

- :func:`parse` turns a decoded JSON object into the dataclass, or raises
  :class:`~control_plane.errors.BadRequest` naming the first field it refuses;
- :func:`json_schema` writes the same rules as an OpenAPI schema (``control_plane.openapi``).

So what the API accepts and what its document says cannot drift apart (checked by
``tests/functional/test_cp_contract.py``). Properties a body does not declare are ignored.
Patterns are ECMA-262 regular expressions as OpenAPI reads them; ``$`` therefore means the very
end (Python's ``$`` would also accept one trailing newline, so it becomes ``\\Z`` here).
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import math
import re
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

from control_plane.errors import BadRequest

T = TypeVar("T")

NOT_BLANK = r"[^\x00-\x20\x7f-\xa0\u1680\u2000-\u200b\u2028\u2029\u202f\u205f\u3000\ufeff]"
"""Pattern of free text: at least one character that is neither white space nor a control
character. Spelled out, not ``\\S``: ECMA-262 and Python disagree on what ``\\s`` means
(U+001C-U+001F, U+0085, U+FEFF), and whatever Python's ``str.strip`` removes is in this set."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class Limits:
    """A field's limits (JSON Schema keywords); ``says`` explains ``pattern`` in errors."""

    min_length: int | None = None
    max_length: int | None = None
    pattern: str | None = None
    says: str | None = None
    strip: bool = False
    """Free text: surrounding white space is dropped from the parsed value."""
    minimum: float | None = None
    maximum: float | None = None
    max_items: int | None = None
    items: Limits | None = None
    description: str | None = None


_NONE = Limits()


def field(*, default: Any = dataclasses.MISSING, default_factory: Any = dataclasses.MISSING,
          **limits: Any) -> Any:
    """A dataclass field with :class:`Limits` (same keywords)."""
    return dataclasses.field(default=default, default_factory=default_factory,
                             metadata={"limits": Limits(**limits)})


@typing.dataclass_transform(frozen_default=True, kw_only_default=True,
                            field_specifiers=(dataclasses.field, field))
def json_object(cls: type[T]) -> type[T]:
    """Make ``cls`` a JSON object type: a frozen, keyword-only dataclass whose fields may carry
    limits (:func:`field`); type checkers see those fields as what they are."""
    return dataclasses.dataclass(frozen=True, kw_only=True)(cls)


# --- parsing --------------------------------------------------------------------------


def parse(cls: type[T], body: Mapping[str, Any]) -> T:
    """``body`` (a decoded JSON object) as ``cls``, or BadRequest naming the field refused."""
    values: dict[str, Any] = {}
    kinds = hints(typing.cast(type, cls))
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name not in body:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise BadRequest(f"{f.name!r} is required")
            continue
        values[f.name] = _check(f.name, kinds[f.name], _limits(f), body[f.name])
    return cls(**values)


def check(cls: type, name: str, value: Any) -> Any:
    """``value`` as field ``name`` of ``cls`` would parse it (for values that come another way)."""
    (f,) = (f for f in dataclasses.fields(cls) if f.name == name)
    return _check(name, hints(cls)[name], _limits(f), value)


def _check(name: str, kind: Any, limits: Limits, value: Any) -> Any:  # noqa: PLR0911, PLR0912 - one branch per JSON type
    kind, nullable = unwrap_optional(kind)
    if value is None:
        if nullable:
            return None
        raise BadRequest(f"{name!r} must not be null")
    origin = get_origin(kind)
    if kind is str:
        return _text(name, limits, value)
    if kind is bool:
        if not isinstance(value, bool):
            raise BadRequest(f"{name!r} must be true or false")
        return value
    if kind in (int, float):
        return _number(name, kind, limits, value)
    if origin is list:
        (item,) = get_args(kind)
        if not isinstance(value, list) or (limits.max_items is not None
                                           and len(value) > limits.max_items):
            raise BadRequest(f"{name!r} must be {_describe(kind, limits)}")
        try:
            return [_check(name, item, limits.items or _NONE, v) for v in value]
        except BadRequest:
            raise BadRequest(f"{name!r} must be {_describe(kind, limits)}") from None
    if origin is dict:
        if not isinstance(value, dict):
            raise BadRequest(f"{name!r} must be a JSON object")
        _, item = get_args(kind)
        return {k: _check(f"{name}.{k}", item, _NONE, v) for k, v in value.items()}
    if kind is Any:
        return value
    if (isinstance(kind, type) and issubclass(kind, enum.Enum)) or origin is Literal:
        allowed = _enum_values(kind)
        if value not in allowed or not isinstance(value, str):
            raise BadRequest(f"{name!r} must be one of {', '.join(map(repr, allowed))}")
        return kind(value) if isinstance(kind, type) else value
    if dataclasses.is_dataclass(kind):
        if not isinstance(value, dict):
            raise BadRequest(f"{name!r} must be a JSON object")
        return parse(kind, value)  # type: ignore[arg-type]
    raise TypeError(f"{name}: no JSON rule for {kind!r}")


def _text(name: str, limits: Limits, value: Any) -> str:
    if not isinstance(value, str):
        raise BadRequest(f"{name!r} must be a string")
    if limits.min_length is not None and len(value) < limits.min_length:
        raise BadRequest(f"{name!r} must be at least {limits.min_length} characters")
    if limits.max_length is not None and len(value) > limits.max_length:
        raise BadRequest(f"{name!r} must be at most {limits.max_length} characters")
    if limits.pattern is not None and not _regex(limits.pattern).search(value):
        raise BadRequest(f"{name!r} must be {limits.says or 'like ' + limits.pattern}")
    return value.strip() if limits.strip else value


def _number(name: str, kind: type, limits: Limits, value: Any) -> int | float:
    ok = not isinstance(value, bool) and isinstance(value, int if kind is int else int | float)
    if ok and limits.minimum is not None:
        ok = value >= limits.minimum
    if ok and limits.maximum is not None:
        ok = value <= limits.maximum
    if not ok or (isinstance(value, float) and math.isnan(value)):  # json.loads takes NaN
        raise BadRequest(f"{name!r} must be {_describe(kind, limits)}")
    return kind(value)  # type: ignore[no-any-return]


def _describe(kind: Any, limits: Limits) -> str:
    """What a field must be, in words, for error messages."""
    if kind is int or kind is float:
        what = "an integer" if kind is int else "a number"
        low, high = limits.minimum, limits.maximum
        if low is not None and high is not None:
            return f"{what} from {low:g} to {high:g}"
        if low is not None:
            return f"{what} of at least {low:g}"
        return what
    if get_origin(kind) is list:
        item = limits.items or _NONE
        count = f"at most {limits.max_items} " if limits.max_items is not None else ""
        size = f" of {item.min_length or 0} to {item.max_length} characters" \
            if item.max_length is not None else ""
        return f"a list of {count}strings{size}"
    return "valid"


@functools.cache
def _regex(pattern: str) -> re.Pattern[str]:
    if pattern.endswith("$") and not pattern.endswith("\\$"):
        pattern = pattern[:-1] + r"\Z"
    return re.compile(pattern)


# --- schemas --------------------------------------------------------------------------


def json_schema(cls: type, components: dict[str, Any]) -> dict[str, Any]:
    """A ``$ref`` to ``cls``'s schema, which is added (with every nested one) to ``components``."""
    name = cls.__name__
    if name not in components:
        components[name] = {}  # a placeholder first: a type may refer to itself
        properties: dict[str, Any] = {}
        required: list[str] = []
        for f in dataclasses.fields(cls):
            properties[f.name] = _schema(hints(cls)[f.name], _limits(f), components)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                required.append(f.name)
        schema: dict[str, Any] = {"type": "object", "properties": properties}
        if required:
            schema["required"] = required
        if cls.__doc__ and not cls.__doc__.startswith(f"{name}("):
            schema["description"] = cls.__doc__.strip().split("\n\n")[0]
        components[name] = schema
    return {"$ref": f"#/components/schemas/{name}"}


def _schema(kind: Any, limits: Limits, components: dict[str, Any]) -> dict[str, Any]:  # noqa: PLR0912 - one branch per JSON type
    kind, nullable = unwrap_optional(kind)
    origin = get_origin(kind)
    schema: dict[str, Any]
    if kind is str:
        schema = {"type": "string"}
        for key, value in (("minLength", limits.min_length), ("maxLength", limits.max_length),
                           ("pattern", limits.pattern)):
            if value is not None:
                schema[key] = value
    elif kind is bool:
        schema = {"type": "boolean"}
    elif kind in (int, float):
        schema = {"type": "integer" if kind is int else "number"}
        if limits.minimum is not None:
            schema["minimum"] = limits.minimum
        if limits.maximum is not None:
            schema["maximum"] = limits.maximum
    elif origin is list:
        (item,) = get_args(kind)
        schema = {"type": "array", "items": _schema(item, limits.items or _NONE, components)}
        if limits.max_items is not None:
            schema["maxItems"] = limits.max_items
    elif origin is dict:
        _, item = get_args(kind)
        schema = {"type": "object"}
        if item is not Any:
            schema["additionalProperties"] = _schema(item, _NONE, components)
    elif kind is Any:
        schema = {}
    elif (isinstance(kind, type) and issubclass(kind, enum.Enum)) or origin is Literal:
        schema = {"type": "string", "enum": list(_enum_values(kind))}
    elif dataclasses.is_dataclass(kind):
        ref = json_schema(kind, components)  # type: ignore[arg-type]
        schema = {"allOf": [ref], "nullable": True} if nullable else ref
        nullable = False
    else:
        raise TypeError(f"no JSON schema for {kind!r}")
    if nullable:
        schema["nullable"] = True
    if limits.description:
        schema["description"] = limits.description
    return schema


# --- shared -----------------------------------------------------------------------------


def to_json(value: Any) -> Any:
    """A body dataclass (or a list or dict of them) as plain JSON values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, enum.Enum):
        return value.value
    return value


@functools.cache
def hints(cls: Any) -> dict[str, Any]:
    """A dataclass's field types, resolved (annotations are strings here)."""
    return typing.get_type_hints(cls)


def _limits(f: dataclasses.Field[Any]) -> Limits:
    limits: Limits = f.metadata.get("limits", _NONE)
    return limits


def unwrap_optional(kind: Any) -> tuple[Any, bool]:
    """``(T, True)`` for ``T | None``, else ``(kind, False)``."""
    if get_origin(kind) in (Union, types.UnionType):
        args = [a for a in get_args(kind) if a is not type(None)]
        if len(args) == 1 and len(get_args(kind)) == 2:
            return args[0], True
    return kind, False


def _enum_values(kind: Any) -> tuple[str, ...]:
    if get_origin(kind) is Literal:
        return tuple(get_args(kind))
    return tuple(member.value for member in kind)
