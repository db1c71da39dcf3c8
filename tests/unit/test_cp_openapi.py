"""The OpenAPI document covers every route of the app and is well formed."""

from control_plane.app import REQUEST_BODIES, app
from control_plane.openapi import OPERATIONS, spec


def test_every_route_is_described():
    routes = {(m, p) for p, methods in app.routes.items() for m in methods}
    assert routes == set(OPERATIONS)


def test_document_shape():
    doc = spec(app, REQUEST_BODIES)
    assert doc["openapi"].startswith("3.")
    for path, ops in doc["paths"].items():
        for op in ops.values():
            assert op["responses"], path
            params = [p["name"] for p in op.get("parameters", []) if p["in"] == "path"]
            assert params == [s.strip("{}") for s in path.split("/") if s.startswith("{")]
    refs = {v.rsplit("/", 1)[1] for v in _refs(doc)}
    assert refs <= set(doc["components"]["schemas"])


def _refs(node):
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "$ref":
                yield v
            else:
                yield from _refs(v)
    elif isinstance(node, list):
        for v in node:
            yield from _refs(v)
