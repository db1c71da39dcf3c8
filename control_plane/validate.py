"""Checks for request fields: each returns the clean value or raises BadRequest naming the field."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, TypeVar

from control_plane.errors import BadRequest

T = TypeVar("T")

IMAGE_REF = re.compile(r"^[a-z0-9][a-z0-9._/:@-]{0,254}$", re.IGNORECASE)
ID = re.compile(r"^[a-z0-9]{1,64}$")
MAX_CPU = 256.0
MAX_MEMORY_MB = 4 * 1024 * 1024


def obj(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    return body


def string(body: Mapping[str, Any], name: str, *, default: str | None = None,
           max_len: int = 200, required: bool = True) -> str:
    value = body.get(name, default)
    if value is None:
        if required:
            raise BadRequest(f"{name!r} is required")
        return ""
    if not isinstance(value, str) or not value.strip():
        raise BadRequest(f"{name!r} must be a non-empty string")
    if len(value) > max_len:
        raise BadRequest(f"{name!r} must be at most {max_len} characters")
    return value.strip()


def integer(body: Mapping[str, Any], name: str, *, default: int | None = None,
            low: int = 0, high: int = 2**31) -> int:
    value = body.get(name, default)
    if value is None:
        raise BadRequest(f"{name!r} is required")
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise BadRequest(f"{name!r} must be an integer from {low} to {high}")
    return value


def number(body: Mapping[str, Any], name: str, *, default: float | None = None,
           low: float = 0.0, high: float = MAX_CPU) -> float:
    value = body.get(name, default)
    if value is None:
        raise BadRequest(f"{name!r} is required")
    if isinstance(value, bool) or not isinstance(value, int | float) or not low < value <= high:
        raise BadRequest(f"{name!r} must be a number above {low:g} and at most {high:g}")
    return float(value)


def boolean(body: Mapping[str, Any], name: str, *, default: bool = False) -> bool:
    value = body.get(name, default)
    if not isinstance(value, bool):
        raise BadRequest(f"{name!r} must be true or false")
    return value


def string_list(body: Mapping[str, Any], name: str, *, max_items: int = 20,
                max_len: int = 40) -> list[str]:
    value = body.get(name, [])
    if not isinstance(value, list) or len(value) > max_items or not all(
            isinstance(v, str) and 0 < len(v) <= max_len for v in value):
        raise BadRequest(f"{name!r} must be a list of at most {max_items} short strings")
    return list(value)


def image_ref(body: Mapping[str, Any], name: str = "image") -> str:
    value = string(body, name, max_len=255)
    if not IMAGE_REF.match(value):
        raise BadRequest(f"{name!r} is not an image reference (repo[:tag] or repo@digest)")
    return value


def ident(value: str, what: str) -> str:
    """Path ids: anything that cannot be one of ours is simply not found."""
    from control_plane.errors import NotFound

    if not ID.match(value):
        raise NotFound(f"no {what} {value!r}")
    return value
