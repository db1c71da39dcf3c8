"""The OpenAPI 3.0 description of every route (``GET /api/openapi.json``).

Paths and methods come from the Chalice route table, so a route cannot be forgotten; request
bodies from the body type each route declares (``route(..., body=...)`` in ``app.py``); answers
and errors from :data:`OPERATIONS`, keyed by ``(method, path)``. Every schema is generated from
the types that parse the bodies (:mod:`control_plane.bodies`) and make the answers
(:mod:`control_plane.replies`) by :func:`control_plane.schema.json_schema`, so no limit is
written twice. A route missing from :data:`OPERATIONS` is a bug that
``tests/unit/test_cp_openapi.py`` catches.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, NamedTuple

from control_plane import __version__, replies
from control_plane.accounts import User
from control_plane.schema import json_schema


class Operation(NamedTuple):
    summary: str
    status: int
    reply: type | Literal["html", "file"] | None
    errors: tuple[int, ...] = ()
    error: type = replies.Error


_AUTH = (401, 403)
_BODY = (413, 415)
OPERATIONS: dict[tuple[str, str], Operation] = {
    ("GET", "/api/health"): Operation("Version and dependency health", 200, replies.Health,
                                      (503,)),
    ("GET", "/.well-known/jwks.json"): Operation("The portal's public signing keys", 200,
                                                 replies.JWKS),
    ("GET", "/api/openapi.json"): Operation("This document", 200, None),
    ("GET", "/oauth/authorize"): Operation("OAuth2 authorization endpoint for instances' auth "
                                           "helpers (RFC 6749 4.1; redirects)", 302, None,
                                           (400, 403), replies.OAuthError),
    ("POST", "/oauth/token"): Operation("OAuth2 token endpoint (form body, client "
                                        "authentication; RFC 6749 errors)", 200, None,
                                        (400, 401), replies.OAuthError),
    ("GET", "/registry/token"): Operation(
        "Image server token (Docker's token protocol; HTTP Basic for users, a node's own "
        "token as Bearer): only the scopes the caller may have", 200, replies.RegistryToken,
        (400, 401, 409, 429)),
    ("GET", "/registry/ca.pem"): Operation("The certificate the image server trusts for "
                                           "tokens (its rootcertbundle)", 200, "file"),
    ("GET", "/"): Operation("The portal web UI (HTML)", 200, "html"),
    ("GET", "/login"): Operation("The portal's login page (HTML)", 200, "html"),
    ("GET", "/portal/{name}"): Operation("The portal's static files", 200, "file", (404,)),
    ("POST", "/api/login"): Operation("Log in with a local account; sets the session cookie",
                                      200, replies.Session, (401, *_BODY, 429)),
    ("POST", "/api/logout"): Operation("End the session", 204, None, (403,)),
    ("GET", "/api/login/providers"): Operation("Configured identity providers", 200,
                                               replies.Providers),
    ("GET", "/api/login/{provider}"): Operation("Start logging in with a provider (302 to it)",
                                                302, None, (404,)),
    ("GET", "/api/login/{provider}/callback"): Operation(
        "The provider sends the browser back here (302 to the portal, session cookie set)", 302,
        None, (400, 401, 404)),
    ("GET", "/api/me"): Operation("The session's user and CSRF token", 200, replies.Session,
                                  (401,)),
    ("POST", "/api/users"): Operation("Create a local account (admin)", 201, User,
                                      (*_AUTH, 409, *_BODY)),
    ("GET", "/api/images"): Operation("Catalog, own saved images, images shared with me", 200,
                                      replies.Images, (401,)),
    ("POST", "/api/images"): Operation("Add or update a catalog entry (admin)", 201,
                                       replies.Image, (*_AUTH, *_BODY)),
    ("DELETE", "/api/images/{image_id}"): Operation(
        "Remove a catalog entry or own saved image (its manifest on the image server too; "
        "the layers go at the next garbage collection)", 204, None, (*_AUTH, 404, 503)),
    ("GET", "/api/images/{image_id}/share"): Operation(
        "Who a saved image is shared with, and its live links (owner)", 200,
        replies.ImageShared, (*_AUTH, 404)),
    ("POST", "/api/images/{image_id}/share"): Operation(
        "Share a saved image with a user or by an expiring link, or revoke (owner)", 200,
        replies.ImageShared, (*_AUTH, 404, *_BODY)),
    ("POST", "/api/images/links"): Operation(
        "Redeem a share link: the image joins my images", 200, replies.Image,
        (*_AUTH, 404, *_BODY)),
    ("POST", "/api/images/{image_id}/export"): Operation(
        "An expiring link to download the image as a docker save tar", 200,
        replies.ExportLink, (*_AUTH, 404, 409)),
    ("POST", "/api/instances"): Operation("Launch an instance (403: a cluster the user may not "
                                          "use)", 202, replies.Instance,
                                          (*_AUTH, 404, *_BODY, 429)),
    ("GET", "/api/instances"): Operation("Own instances and those shared with me (admins: "
                                         "?all=true lists every instance)", 200,
                                         replies.Instances, _AUTH),
    ("GET", "/api/instances/{instance_id}"): Operation("One instance", 200, replies.Instance,
                                                       (401, 404)),
    ("POST", "/api/instances/{instance_id}/stop"): Operation("Stop", 202, replies.Instance,
                                                             (*_AUTH, 404, 409)),
    ("POST", "/api/instances/{instance_id}/save"): Operation(
        "Save a stopped instance as an image", 202, replies.Instance, (*_AUTH, 404, 409)),
    ("POST", "/api/instances/{instance_id}/discard"): Operation(
        "Discard a stopped instance", 202, replies.Instance, (*_AUTH, 404, 409)),
    ("DELETE", "/api/instances/{instance_id}"): Operation("Delete (from the list)", 204, None,
                                                          (*_AUTH, 404, 409)),
    ("GET", "/api/instances/{instance_id}/share"): Operation(
        "Who the instance is shared with (owner)", 200, replies.Shared, (*_AUTH, 404)),
    ("POST", "/api/instances/{instance_id}/share"): Operation(
        "Share with a user (or revoke)", 200, replies.Shared, (*_AUTH, 404, *_BODY)),
    ("POST", "/api/clusters"): Operation("Create a cluster (admin)", 201, replies.Cluster,
                                         (*_AUTH, *_BODY)),
    ("GET", "/api/clusters"): Operation("List clusters (admin)", 200, replies.Clusters, _AUTH),
    ("POST", "/api/clusters/{cluster_id}/access"): Operation(
        "Who may launch into the cluster (admin)", 200, replies.Cluster,
        (*_AUTH, 404, *_BODY)),
    ("POST", "/api/clusters/{cluster_id}/join-tokens"): Operation(
        "One-time node join token and the command that uses it (admin)", 201,
        replies.JoinToken, (*_AUTH, 404, *_BODY)),
    ("GET", "/api/clusters/{cluster_id}/join-tokens"): Operation(
        "Unused join tokens, without their secrets (admin)", 200, replies.JoinTokens,
        (*_AUTH, 404)),
    ("DELETE", "/api/clusters/{cluster_id}/join-tokens/{token_id}"): Operation(
        "Revoke an unused join token (admin)", 204, None, (*_AUTH, 404)),
    ("GET", "/api/clusters/{cluster_id}/nodes"): Operation(
        "Nodes with capacity, usage, heartbeat age (admin)", 200, replies.Nodes,
        (*_AUTH, 404)),
    ("POST", "/api/nodes/enroll"): Operation("Enrol a node with a join token", 201,
                                             replies.Enrolled, (401, *_BODY)),
    ("POST", "/api/nodes/{node_id}/credentials"): Operation(
        "Short-lived queue credentials for a node (Bearer: node-signed JWT)", 200,
        replies.Credentials, (401, 403, 404)),
    ("DELETE", "/api/nodes/{node_id}"): Operation(
        "A node that just enrolled withdraws (its own bearer token; nothing ever placed on it)",
        204, None, (401, 403, 409)),
    ("POST", "/api/nodes/{node_id}/instances/{instance_id}/tunnel-token"): Operation(
        "Renew the tunnel token of an instance placed on this node (Bearer: node-signed JWT)",
        200, replies.TunnelToken, (401, 403)),
    ("GET", "/api/revocations"): Operation(
        "Revoked instance hosts an edge router must know when it starts", 200,
        replies.Revocations),
    ("GET", "/api/nodes/{node_id}/instances"): Operation(
        "What is placed on this node, in which state (Bearer: node-signed JWT): what it may "
        "keep", 200, replies.Placed, (401, 403)),
    ("POST", "/api/nodes/{node_id}/instances/{instance_id}/storage"): Operation(
        "Renewed storage credentials for an instance the node runs, with the storage helper's "
        "health (Bearer: node-signed JWT)", 200, replies.StorageSession,
        (400, 401, 403, 404, 409, *_BODY, 503)),
    ("GET", "/api/storage"): Operation("My persistent storage: use and quota", 200,
                                       replies.StorageUse, (401, 503)),
    ("GET", "/api/users/{username}/storage"): Operation(
        "A user's persistent storage: use and quota (admin)", 200, replies.StorageUse,
        (*_AUTH, 404, 503)),
    ("PUT", "/api/users/{username}/storage"): Operation(
        "Set a user's own storage quota, or null for the default (admin)", 200,
        replies.StorageUse, (*_AUTH, 404, *_BODY, 503)),
    ("POST", "/api/nodes/{node_id}/drain"): Operation("No new placements on this node (admin)",
                                                      200, replies.Node, (*_AUTH, 404, 409)),
    ("POST", "/api/nodes/{node_id}/activate"): Operation("Undo drain (admin)", 200,
                                                         replies.Node, (*_AUTH, 404, 409)),
    ("POST", "/api/nodes/{node_id}/decommission"): Operation("Retire a node for good (admin)",
                                                             200, replies.Node, (*_AUTH, 404)),
}

QUERY_PARAMETERS: dict[tuple[str, str], list[dict[str, Any]]] = {
    ("GET", "/api/instances"): [{"name": "all", "in": "query", "required": False,
                                 "schema": {"type": "string", "enum": ["true", "false"]}}],
    ("GET", "/api/login/{provider}"): [{"name": "next", "in": "query", "required": False,
                                        "schema": {"type": "string"}}],
    ("GET", "/registry/token"): [
        {"name": "service", "in": "query", "required": False, "schema": {"type": "string"}},
        {"name": "scope", "in": "query", "required": False, "explode": True,
         "schema": {"type": "array", "items": {"type": "string", "maxLength": 300}},
         "description": "repeatable: type:name:actions, e.g. repository:users/alice/x:pull"}],
    ("GET", "/api/login/{provider}/callback"): [
        {"name": n, "in": "query", "required": False, "schema": {"type": "string"}}
        for n in ("code", "state", "error")],
}

_ERROR_TEXT = {400: "bad input", 401: "not logged in / bad credentials or token",
               403: "not allowed (or missing CSRF token)", 404: "unknown id (or not yours)",
               409: "wrong state for this request", 413: "body too large",
               415: "body is not application/json", 429: "slow down (or limit reached)",
               503: "a dependency is failing"}
_TEXT = {"type": "string"}


def spec(app: Any, bodies: Mapping[tuple[str, str], type] | None = None,
         extra: dict[tuple[str, str], Operation] | None = None) -> dict[str, Any]:
    """The document for ``app``'s routes; ``bodies``: the body type of each route taking one."""
    operations = {**OPERATIONS, **(extra or {})}
    bodies = bodies or {}
    components: dict[str, Any] = {}
    paths: dict[str, Any] = {}
    for path, methods in sorted(app.routes.items()):
        for method in sorted(methods):
            summary, status, reply, errors, error_type = operations[(method, path)]
            error = json_schema(error_type, components)
            op: dict[str, Any] = {"summary": summary,
                                  "operationId": f"{method.lower()}_{_slug(path)}"}
            params = [p.strip("{}") for p in path.split("/") if p.startswith("{")]
            parameters = [{"name": p, "in": "path", "required": True, "schema": _TEXT}
                          for p in params]
            parameters += QUERY_PARAMETERS.get((method, path), [])
            if parameters:
                op["parameters"] = parameters
            body = bodies.get((method, path))
            if body is not None:
                op["requestBody"] = {"required": True, "content": {
                    "application/json": {"schema": json_schema(body, components)}}}
            answer: dict[str, Any] = {"description": "success"}
            if reply == "html":
                answer["content"] = {"text/html": {"schema": _TEXT}}
            elif reply == "file":
                answer["content"] = {"text/javascript": {"schema": _TEXT},
                                     "text/css": {"schema": _TEXT},
                                     "text/html": {"schema": _TEXT}}
            elif reply is not None:
                answer["content"] = {"application/json": {
                    "schema": json_schema(reply, components)}}
            responses: dict[str, Any] = {str(status): answer}
            for code in sorted({*errors, 400} if body is not None else set(errors)):
                responses[str(code)] = {"description": _ERROR_TEXT.get(code, "error"),
                                        "content": {"application/json": {"schema": error}}}
            op["responses"] = responses
            paths.setdefault(path, {})[method.lower()] = op
    return {
        "openapi": "3.0.3",
        "info": {"title": "dit4c control plane", "version": __version__},
        "paths": paths,
        "components": {
            "schemas": dict(sorted(components.items())),
            "securitySchemes": {
                "session": {"type": "apiKey", "in": "cookie", "name": "dit4c_session",
                            "description": "__Host-dit4c_session when the portal is https"},
                "csrf": {"type": "apiKey", "in": "header", "name": "X-CSRF-Token"}},
        },
    }


def _slug(path: str) -> str:
    return "_".join(p.strip("{}").replace("-", "_").replace(".", "_")
                    for p in path.split("/") if p) or "root"
