"""The OpenAPI 3.0 description of every route (``GET /api/openapi.json``).

Paths and methods come from the Chalice route table, so a route cannot be forgotten; bodies,
answers and errors come from :data:`OPERATIONS`, keyed by ``(method, path)``. A route missing
from :data:`OPERATIONS` is a bug that ``tests/unit/test_cp_openapi.py`` catches.
"""

from __future__ import annotations

from typing import Any

from control_plane import __version__

_STR = {"type": "string"}
_INT = {"type": "integer"}
_NUM = {"type": "number"}
_BOOL = {"type": "boolean"}


def _obj(props: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": props}
    if required:
        schema["required"] = list(required)
    return schema


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


SCHEMAS: dict[str, Any] = {
    "Error": _obj({"error": _obj({"code": _STR, "message": _STR}, ("code", "message"))},
                  ("error",)),
    "User": _obj({"username": _STR, "admin": _BOOL, "provider": _STR}),
    "Session": _obj({"user": _ref("User"), "csrf_token": _STR}),
    "Login": _obj({"username": {"type": "string", "maxLength": 256},
                   "password": {"type": "string", "maxLength": 1024}},
                  ("username", "password")),
    "NewUser": _obj({"username": _STR, "password": {"type": "string", "minLength": 8},
                     "admin": _BOOL}, ("username", "password")),
    "Image": _obj({"id": _STR, "name": _STR, "image": _STR, "port": _INT, "cpu": _NUM,
                   "memory_mb": _INT, "tags": {"type": "array", "items": _STR},
                   "kind": {"type": "string", "enum": ["catalog", "saved"]},
                   "owner": {"type": "string", "nullable": True}, "created_at": _STR}),
    "NewImage": _obj({"name": _STR, "image": _STR,
                      "port": {"type": "integer", "minimum": 1, "maximum": 65535},
                      "cpu": _NUM, "memory_mb": _INT, "tags": {"type": "array", "items": _STR}},
                     ("name", "image", "port")),
    "Share": _obj({"username": _STR, "revoke": _BOOL}, ("username",)),
    "Shared": _obj({"id": _STR, "shared_with": {"type": "array", "items": _STR}}),
    "Launch": _obj({"image_id": _STR, "cluster_id": _STR, "name": _STR}, ("image_id",)),
    "Instance": _obj({
        "id": _STR, "name": _STR, "owner": _STR, "image_id": _STR, "image": _STR,
        "cluster_id": _STR, "node_id": {"type": "string", "nullable": True},
        "state": {"type": "string", "enum": ["pending", "scheduled", "starting", "running",
                                             "stopping", "stopped", "saving", "saved",
                                             "discarded", "failed"]},
        "version": _INT, "cpu": _NUM, "memory_mb": _INT,
        "url": {"type": "string", "nullable": True,
                "description": "set once the instance is running"},
        "progress": {"type": "object", "additionalProperties": _INT,
                     "description": "percentages, e.g. {\"pull\": 40}"},
        "reason": {"type": "string", "nullable": True,
                   "description": "why it failed (or waits), for people"},
        "saved_image_id": {"type": "string", "nullable": True},
        "created_at": _STR, "updated_at": _STR}),
    "RegistryToken": _obj({"token": _STR, "access_token": _STR, "expires_in": _INT,
                           "issued_at": _STR}),
    "NewCluster": _obj({"name": _STR}, ("name",)),
    "Cluster": _obj({"id": _STR, "name": _STR, "created_at": _STR}),
    "JoinToken": _obj({"token": _STR, "cluster_id": _STR, "expires_at": _STR}),
    "Enroll": _obj({"join_token": _STR, "public_jwk": {"type": "object"}, "name": _STR,
                    "cpu": _NUM, "memory_mb": _INT},
                   ("join_token", "public_jwk", "name", "cpu", "memory_mb")),
    "Enrolled": _obj({"node_id": _STR, "cluster_id": _STR, "queue_url": _STR,
                      "events_queue_url": _STR}),
    "Credentials": _obj({"access_key_id": _STR, "secret_access_key": _STR,
                         "session_token": _STR, "expiration": _STR, "region": _STR,
                         "queue_url": _STR, "events_queue_url": _STR,
                         "endpoint_url": {"type": "string", "nullable": True}}),
    "Node": _obj({"id": _STR, "cluster_id": _STR, "name": _STR,
                  "state": {"type": "string", "enum": ["active", "draining", "decommissioned"]},
                  "cpu_total": _NUM, "memory_mb_total": _INT, "cpu_reserved": _NUM,
                  "memory_mb_reserved": _INT, "cpu_used": _NUM, "memory_mb_used": _INT,
                  "load": _NUM, "running": {"type": "array", "items": _STR},
                  "version": {"type": "string", "nullable": True},
                  "heartbeat_age_seconds": {"type": "number", "nullable": True}}),
    "Health": _obj({"status": _STR, "version": _STR,
                    "registry": {"type": "string", "nullable": True,
                                 "description": "the image server (host:port), if any"},
                    "dependencies": {"type": "object", "additionalProperties": _STR}}),
    "JWKS": _obj({"keys": {"type": "array", "items": {"type": "object"}}}),
}

# (method, path) -> (summary, request schema or None, success status, response schema or None,
#                    error statuses)
_AUTH = (401, 403)
OPERATIONS: dict[tuple[str, str], tuple[str, str | None, int, Any, tuple[int, ...]]] = {
    ("GET", "/api/health"): ("Version and dependency health", None, 200, "Health", (503,)),
    ("GET", "/.well-known/jwks.json"): ("The portal's public signing keys", None, 200, "JWKS",
                                        ()),
    ("GET", "/api/openapi.json"): ("This document", None, 200, None, ()),
    ("GET", "/oauth/authorize"): ("OAuth2 authorization endpoint for instances' auth helpers "
                                  "(RFC 6749 4.1; redirects)", None, 302, None, (400, 403)),
    ("POST", "/oauth/token"): ("OAuth2 token endpoint (form body, client authentication; "
                               "RFC 6749 errors)", None, 200, None, (400, 401)),
    ("GET", "/registry/token"): ("Image server token (Docker's token protocol: query "
                                 "service and scope; HTTP Basic for users, a node's own "
                                 "token as Bearer)", None, 200, "RegistryToken",
                                (400, 401, 409, 429)),
    ("GET", "/registry/ca.pem"): ("The certificate the image server trusts for tokens "
                                  "(its rootcertbundle)", None, 200, "file", ()),
    ("GET", "/"): ("The portal web UI (HTML)", None, 200, "html", ()),
    ("GET", "/login"): ("The portal's login page (HTML)", None, 200, "html", ()),
    ("GET", "/portal/{name}"): ("The portal's static files", None, 200, "file", (404,)),
    ("POST", "/api/login"): ("Log in with a local account; sets the session cookie", "Login",
                             200, "Session", (400, 401, 413, 415, 429)),
    ("POST", "/api/logout"): ("End the session", None, 204, None, (403,)),
    ("GET", "/api/login/providers"): ("Configured identity providers", None, 200,
                                      _obj({"providers": {"type": "array", "items": _obj({
                                          "name": _STR, "display_name": _STR, "kind": _STR,
                                          "login_url": _STR})}}), ()),
    ("GET", "/api/login/{provider}"): ("Start logging in with a provider (302 to it)", None,
                                       302, None, (404,)),
    ("GET", "/api/login/{provider}/callback"): ("The provider sends the browser back here "
                                                "(302 to the portal, session cookie set)", None,
                                                302, None, (400, 401, 404)),
    ("GET", "/api/me"): ("The session's user and CSRF token", None, 200, "Session", (401,)),
    ("POST", "/api/users"): ("Create a local account (admin)", "NewUser", 201, "User",
                             (400, *_AUTH, 409, 413, 415)),
    ("GET", "/api/images"): ("Catalog, own saved images, images shared with me", None, 200,
                             _obj({"images": {"type": "array", "items": _ref("Image")}}),
                             (401,)),
    ("POST", "/api/images"): ("Add or update a catalog entry (admin)", "NewImage", 201,
                              "Image", (400, *_AUTH, 413, 415)),
    ("DELETE", "/api/images/{image_id}"): ("Remove a catalog entry or own saved image", None,
                                           204, None, (*_AUTH, 404)),
    ("POST", "/api/images/{image_id}/share"): ("Share a saved image with a user (or revoke)",
                                               "Share", 200, "Shared",
                                               (400, *_AUTH, 404, 413, 415)),
    ("POST", "/api/instances"): ("Launch an instance", "Launch", 202, "Instance",
                                 (400, *_AUTH, 404, 413, 415, 429)),
    ("GET", "/api/instances"): ("Own instances and those shared with me (admins: ?all=true "
                                "lists every instance)", None, 200,
                                _obj({"instances": {"type": "array",
                                                    "items": _ref("Instance")}}), _AUTH),
    ("GET", "/api/instances/{instance_id}"): ("One instance", None, 200, "Instance",
                                              (401, 404)),
    ("POST", "/api/instances/{instance_id}/stop"): ("Stop", None, 202, "Instance",
                                                    (*_AUTH, 404, 409)),
    ("POST", "/api/instances/{instance_id}/save"): ("Save a stopped instance as an image",
                                                    None, 202, "Instance",
                                                    (*_AUTH, 404, 409)),
    ("POST", "/api/instances/{instance_id}/discard"): ("Discard a stopped instance", None,
                                                       202, "Instance", (*_AUTH, 404, 409)),
    ("DELETE", "/api/instances/{instance_id}"): ("Delete (from the list)", None, 204, None,
                                                 (*_AUTH, 404, 409)),
    ("POST", "/api/instances/{instance_id}/share"): ("Share with a user (or revoke)", "Share",
                                                     200, "Shared",
                                                     (400, *_AUTH, 404, 413, 415)),
    ("POST", "/api/clusters"): ("Create a cluster (admin)", "NewCluster", 201, "Cluster",
                                (400, *_AUTH, 413, 415)),
    ("GET", "/api/clusters"): ("List clusters (admin)", None, 200,
                               _obj({"clusters": {"type": "array", "items": _ref("Cluster")}}),
                               _AUTH),
    ("POST", "/api/clusters/{cluster_id}/join-tokens"): ("One-time node join token (admin)",
                                                         None, 201, "JoinToken",
                                                         (*_AUTH, 404)),
    ("GET", "/api/clusters/{cluster_id}/nodes"): ("Nodes with capacity, usage, heartbeat age"
                                                  " (admin)", None, 200,
                                                  _obj({"nodes": {"type": "array",
                                                                  "items": _ref("Node")}}),
                                                  (*_AUTH, 404)),
    ("POST", "/api/nodes/enroll"): ("Enrol a node with a join token", "Enroll", 201,
                                    "Enrolled", (400, 401, 413, 415)),
    ("POST", "/api/nodes/{node_id}/credentials"): ("Short-lived queue credentials for a node "
                                                   "(Bearer: node-signed JWT)", None, 200,
                                                   "Credentials", (401, 403, 404)),
    ("POST", "/api/nodes/{node_id}/drain"): ("No new placements on this node (admin)", None,
                                             200, "Node", (*_AUTH, 404, 409)),
    ("POST", "/api/nodes/{node_id}/activate"): ("Undo drain (admin)", None, 200, "Node",
                                                (*_AUTH, 404, 409)),
    ("POST", "/api/nodes/{node_id}/decommission"): ("Retire a node for good (admin)", None,
                                                    200, "Node", (*_AUTH, 404)),
}

QUERY_PARAMETERS: dict[tuple[str, str], list[dict[str, Any]]] = {
    ("GET", "/api/instances"): [{"name": "all", "in": "query", "required": False,
                                 "schema": {"type": "string", "enum": ["true", "false"]}}],
    ("GET", "/api/login/{provider}"): [{"name": "next", "in": "query", "required": False,
                                        "schema": {"type": "string"}}],
    ("GET", "/api/login/{provider}/callback"): [
        {"name": n, "in": "query", "required": False, "schema": {"type": "string"}}
        for n in ("code", "state", "error")],
}

_ERROR_TEXT = {400: "bad input", 401: "not logged in / bad credentials or token",
               403: "not allowed (or missing CSRF token)", 404: "unknown id (or not yours)",
               409: "wrong state for this request", 413: "body too large",
               415: "body is not application/json", 429: "slow down (or limit reached)",
               503: "a dependency is failing"}


def spec(app: Any, extra: dict[tuple[str, str], Any] | None = None) -> dict[str, Any]:
    operations = {**OPERATIONS, **(extra or {})}
    paths: dict[str, Any] = {}
    for path, methods in sorted(app.routes.items()):
        for method in sorted(methods):
            summary, request, status, response, errors = operations[(method, path)]
            op: dict[str, Any] = {"summary": summary,
                                  "operationId": f"{method.lower()}_{_slug(path)}"}
            params = [p.strip("{}") for p in path.split("/") if p.startswith("{")]
            parameters = [{"name": p, "in": "path", "required": True,
                           "schema": {"type": "string"}} for p in params]
            parameters += QUERY_PARAMETERS.get((method, path), [])
            if parameters:
                op["parameters"] = parameters
            if request:
                op["requestBody"] = {"required": True, "content": {
                    "application/json": {"schema": _ref(request)}}}
            answer: dict[str, Any] = {"description": "success"}
            if response == "html":
                answer["content"] = {"text/html": {"schema": _STR}}
            elif response == "file":
                answer["content"] = {"text/javascript": {"schema": _STR},
                                     "text/css": {"schema": _STR},
                                     "text/html": {"schema": _STR}}
            elif response is not None:
                schema = _ref(response) if isinstance(response, str) else response
                answer["content"] = {"application/json": {"schema": schema}}
            responses: dict[str, Any] = {str(status): answer}
            for code in sorted({*errors, 400} if request else set(errors)):
                responses[str(code)] = {"description": _ERROR_TEXT.get(code, "error"),
                                        "content": {"application/json": {
                                            "schema": _ref("Error")}}}
            op["responses"] = responses
            paths.setdefault(path, {})[method.lower()] = op
    return {
        "openapi": "3.0.3",
        "info": {"title": "dit4c control plane", "version": __version__},
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "session": {"type": "apiKey", "in": "cookie", "name": "dit4c_session"},
                "csrf": {"type": "apiKey", "in": "header", "name": "X-CSRF-Token"}},
        },
    }


def _slug(path: str) -> str:
    return "_".join(p.strip("{}").replace("-", "_").replace(".", "_")
                    for p in path.split("/") if p) or "root"
