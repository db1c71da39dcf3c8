"""API Gateway in front of the Chalice app: one catch-all route in the cloud, Chalice's routes here.

The template sends every request to ``control_plane.app.app`` through a single catch-all route
(the HTTP API's ``$default`` route, payload format 1.0; a REST API's ``/{proxy+}`` resource does
the same). Chalice dispatches on ``requestContext.resourcePath``, which API Gateway sets to the
route *it* matched (``$default``, ``/{proxy+}``), not to one of the app's; left alone, every
request would be a 405. :class:`GatewayChalice` resolves the request's ``path`` against the app's
own route table first, the way API Gateway would with one resource per route: per segment, a
literal beats a ``{capture}``; a trailing slash is ignored except on ``/``. The resolved route
and its captures replace ``resourcePath`` and ``pathParameters``, and Chalice does the rest.

A path that no route matches gets the API's JSON 404, the same as the local stack answers.
An event that already names one of the app's routes (``chalice.local``, a REST API with one
resource per route) is passed through untouched.

Payload format 1.0 is what Chalice reads (``multiValueQueryStringParameters``, ``headers``,
``requestContext``) and writes (``multiValueHeaders`` for several ``Set-Cookie``), so nothing
else needs translating.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from chalice.app import Chalice


@dataclass(frozen=True)
class Match:
    route: str
    """The app's route, e.g. ``/api/instances/{instance_id}``."""
    params: dict[str, str]


class RouteTable:
    """The app's route paths, ordered so that the first match is the most specific one."""

    def __init__(self, routes: Iterable[str]) -> None:
        split = [(route, route.split("/")) for route in routes]
        # Literal segments before captures, segment by segment (as API Gateway resolves its
        # resource tree): /api/login/providers wins over /api/login/{provider}.
        split.sort(key=lambda item: [(_is_capture(s), s) for s in item[1]])
        self._routes = split

    def resolve(self, path: str) -> Match | None:
        if path != "/" and path.endswith("/"):
            path = path[:-1]
        parts = path.split("/")
        for route, segments in self._routes:
            if len(segments) != len(parts):
                continue
            params = {}
            for want, got in zip(segments, parts, strict=True):
                if _is_capture(want):
                    if not got:
                        break
                    params[want[1:-1]] = got
                elif want != got:
                    break
            else:
                return Match(route, params)
        return None


def _is_capture(segment: str) -> bool:
    return segment.startswith("{") and segment.endswith("}")


def not_found(path: str) -> dict[str, Any]:
    """The Lambda proxy response for a path no route serves (the API's error shape)."""
    body = {"error": {"code": "not_found", "message": f"no such path: {path}"}}
    return {"statusCode": 404,
            "headers": {"Content-Type": "application/json", "Cache-Control": "no-store"},
            "body": json.dumps(body, separators=(",", ":"))}


def resolve_event(event: Mapping[str, Any], table: RouteTable, known: Mapping[str, Any]
                  ) -> dict[str, Any] | None:
    """``event`` with ``resourcePath`` and ``pathParameters`` of the app's route, or None."""
    context = dict(event.get("requestContext") or {})
    if context.get("resourcePath") in known:
        return dict(event)
    path = event.get("path")
    if not isinstance(path, str):
        return None
    match = table.resolve(path)
    if match is None:
        return None
    context["resourcePath"] = match.route
    return {**event, "resource": match.route, "requestContext": context,
            "pathParameters": match.params or None}


class GatewayChalice(Chalice):
    """A Chalice app that answers API Gateway's catch-all route; see the module docstring."""

    @cached_property
    def route_table(self) -> RouteTable:
        # Built at the first request: every route and blueprint is registered by then.
        return RouteTable(self.routes)

    def __call__(self, event: Any, context: Any) -> dict[str, Any]:
        resolved = resolve_event(event, self.route_table, self.routes)
        if resolved is None:
            return not_found(str(event.get("path", "")))
        return super().__call__(resolved, context)
