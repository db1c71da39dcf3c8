"""The Chalice app: HTTP routes mapped to domain calls, nothing more.

Entry points (docs/contracts.md): ``app`` (API), ``on_event`` (events queue consumer),
``reap`` (scheduled reaper). Domain objects come from :func:`control_plane.services.current`,
built on first use so that importing this module stays cheap (Lambda cold starts).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from chalice.app import Chalice, Rate, Request, Response, SQSEvent

from control_plane import portal_routes, web
from control_plane.oauth_routes import oauth_blueprint
from control_plane.registry_routes import registry_blueprint

if TYPE_CHECKING:
    from control_plane.accounts import Session
    from control_plane.services import Services

app = Chalice(app_name="dit4c")
app.log.setLevel(logging.INFO)
app.register_middleware(web.rewrite_framework_errors, "http")
log = logging.getLogger("dit4c.control_plane.app")


def _svc() -> Services:
    from control_plane import services  # the domain modules load at the first request

    return services.current()


def _session_username(request: Request) -> str | None:
    session = web.session_of(request, _svc().accounts.session)
    return session.user.username if session else None


app.register_blueprint(portal_routes.blueprint)
app.register_blueprint(oauth_blueprint(get_server=lambda: _svc().oauth,
                                       session_username=_session_username))
app.register_blueprint(registry_blueprint(get_registry=lambda: _svc().registry))


def route(path: str, method: str = "GET", status: int = 200
          ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        app.route(path, methods=[method], content_types=["application/json"])(
            web.endpoint(fn, status))
        return fn

    return register


def _request() -> Request:
    request = app.current_request
    assert request is not None, "only called while handling a request"
    return request


def _session() -> Session:
    return web.require_session(_request(), _svc().accounts.session)


def _admin() -> Session:
    session = _session()
    web.require_admin(session)
    return session


def _body() -> dict[str, Any]:
    return web.body(_request())


# --- health, keys, spec -----------------------------------------------------------------


@route("/api/health")
def health() -> Response:
    report = _svc().health()
    return web.json_response(report, 200 if report["status"] == "ok" else 503)


@route("/.well-known/jwks.json")
def jwks() -> Response:
    return web.json_response(_svc().keys.jwks(), headers={"Cache-Control": "max-age=300"})


@route("/api/openapi.json")
def openapi() -> dict[str, Any]:
    from control_plane.openapi import spec

    return spec(app)


# --- accounts ---------------------------------------------------------------------------


@route("/api/login", "POST")
def login() -> Response:
    body = _body()
    svc = _svc()
    session = svc.accounts.login(body.get("username"), body.get("password"),
                                 web.client_address(_request()))
    cookie = web.session_cookie(session.session_id, svc.config.session_seconds,
                                secure=svc.config.secure_cookies)
    return web.json_response({"user": session.user.to_json(), "csrf_token": session.csrf_token},
                             headers={"Set-Cookie": cookie})


@route("/api/logout", "POST")
def logout() -> Response:
    svc = _svc()
    if web.session_of(_request(), svc.accounts.session) is not None:
        session = _session()
        svc.accounts.end_session(session.session_id)
    cookie = web.session_cookie("", 0, secure=svc.config.secure_cookies)
    return Response(body="", status_code=204, headers={"Set-Cookie": cookie})


@route("/api/login/providers")
def login_providers() -> dict[str, Any]:
    return {"providers": _svc().logins.listing()}


@route("/api/login/{provider}")
def login_start(provider: str) -> Response:
    from control_plane.login_providers import LOGIN_COOKIE, STATE_SECONDS

    svc = _svc()
    query: Any = _request().query_params or {}
    next_path = query.get("next")
    location, binding = svc.logins.start(provider, next_path if isinstance(next_path, str)
                                         else None)
    cookie = web.cookie(LOGIN_COOKIE, binding, STATE_SECONDS, path="/api/login",
                        secure=svc.config.secure_cookies)
    return Response(body="", status_code=302, headers={"Location": location,
                                                       "Set-Cookie": cookie,
                                                       "Cache-Control": "no-store"})


@route("/api/login/{provider}/callback")
def login_callback(provider: str) -> Response:
    from control_plane.login_providers import LOGIN_COOKIE

    svc = _svc()
    request = _request()
    params = {k: v for k, v in (request.query_params or {}).items() if isinstance(v, str)}
    session, next_path = svc.logins.finish(provider, params,
                                           web.cookie_value(request, LOGIN_COOKIE))
    cookies = [web.session_cookie(session.session_id, svc.config.session_seconds,
                                  secure=svc.config.secure_cookies),
               web.cookie(LOGIN_COOKIE, "", 0, path="/api/login",
                          secure=svc.config.secure_cookies)]
    return Response(body="", status_code=302, headers={"Location": next_path,
                                                       "Set-Cookie": cookies,
                                                       "Cache-Control": "no-store"})


@route("/api/me")
def me() -> dict[str, Any]:
    session = _session()
    return {"user": session.user.to_json(), "csrf_token": session.csrf_token}


@route("/api/users", "POST", 201)
def create_user() -> dict[str, Any]:
    _admin()
    body = _body()
    from control_plane import validate

    user = _svc().accounts.create_user(body.get("username"), body.get("password"),
                                       admin=validate.boolean(body, "admin"))
    return user.to_json()


# --- images -----------------------------------------------------------------------------


@route("/api/images")
def list_images() -> dict[str, Any]:
    return {"images": _svc().catalog.list_for(_session().user.username)}


@route("/api/images", "POST", 201)
def add_image() -> dict[str, Any]:
    _admin()
    from control_plane.catalog import CatalogEntry

    return _svc().catalog.add(CatalogEntry.from_body(_body()))


@route("/api/images/{image_id}", "DELETE")
def delete_image(image_id: str) -> None:
    user = _session().user
    _svc().catalog.remove(image_id, user.username, admin=user.admin)


@route("/api/images/{image_id}/share", "POST")
def share_image(image_id: str) -> dict[str, Any]:
    return _svc().lifecycle.share_image(_session().user, image_id, _body())


# --- instances --------------------------------------------------------------------------


def _instance(item: dict[str, Any]) -> dict[str, Any]:
    from control_plane.instances import instance_json

    return instance_json(item)


@route("/api/instances", "POST", 202)
def launch() -> dict[str, Any]:
    return _instance(_svc().lifecycle.launch(_session().user, _body()))


@route("/api/instances")
def list_instances() -> dict[str, Any]:
    user = _session().user
    query: Any = _request().query_params or {}
    if query.get("all") in ("1", "true"):
        return {"instances": _svc().lifecycle.list_all(user)}
    return {"instances": _svc().lifecycle.list_for(user)}


@route("/api/instances/{instance_id}")
def get_instance(instance_id: str) -> dict[str, Any]:
    return _instance(_svc().lifecycle.visible(_session().user, instance_id))


@route("/api/instances/{instance_id}/stop", "POST", 202)
def stop_instance(instance_id: str) -> dict[str, Any]:
    return _instance(_svc().lifecycle.stop(_session().user, instance_id))


@route("/api/instances/{instance_id}/save", "POST", 202)
def save_instance(instance_id: str) -> dict[str, Any]:
    return _instance(_svc().lifecycle.save(_session().user, instance_id))


@route("/api/instances/{instance_id}/discard", "POST", 202)
def discard_instance(instance_id: str) -> dict[str, Any]:
    return _instance(_svc().lifecycle.discard(_session().user, instance_id))


@route("/api/instances/{instance_id}", "DELETE")
def delete_instance(instance_id: str) -> None:
    _svc().lifecycle.delete(_session().user, instance_id)


@route("/api/instances/{instance_id}/share", "POST")
def share_instance(instance_id: str) -> dict[str, Any]:
    return _svc().lifecycle.share(_session().user, instance_id, _body())


# --- clusters and nodes -----------------------------------------------------------------


@route("/api/clusters", "POST", 201)
def create_cluster() -> dict[str, Any]:
    _admin()
    from control_plane import validate

    return _svc().nodes.create_cluster(validate.string(_body(), "name", max_len=100))


@route("/api/clusters")
def list_clusters() -> dict[str, Any]:
    _admin()
    return {"clusters": _svc().nodes.list_clusters()}


@route("/api/clusters/{cluster_id}/join-tokens", "POST", 201)
def create_join_token(cluster_id: str) -> dict[str, Any]:
    _admin()
    return _svc().nodes.create_join_token(cluster_id)


@route("/api/clusters/{cluster_id}/nodes")
def list_nodes(cluster_id: str) -> dict[str, Any]:
    _admin()
    from control_plane.nodes import node_json

    nodes = _svc().nodes
    nodes.get_cluster(cluster_id)
    return {"nodes": [node_json(n) for n in nodes.in_cluster(cluster_id)]}


@route("/api/nodes/enroll", "POST", 201)
def enroll() -> dict[str, Any]:
    return _svc().nodes.enroll(_body())


@route("/api/nodes/{node_id}/credentials", "POST")
def node_credentials(node_id: str) -> dict[str, Any]:
    return _svc().nodes.credentials(node_id, _request().headers.get("authorization"))


def _node_status(node_id: str, status: str) -> dict[str, Any]:
    _admin()
    from control_plane.nodes import node_json

    return node_json(_svc().nodes.set_status(node_id, status))


@route("/api/nodes/{node_id}/drain", "POST")
def drain_node(node_id: str) -> dict[str, Any]:
    return _node_status(node_id, "draining")


@route("/api/nodes/{node_id}/activate", "POST")
def activate_node(node_id: str) -> dict[str, Any]:
    return _node_status(node_id, "active")


@route("/api/nodes/{node_id}/decommission", "POST")
def decommission_node(node_id: str) -> dict[str, Any]:
    return _node_status(node_id, "decommissioned")


# --- events and schedule ----------------------------------------------------------------


@app.on_sqs_message(queue="dit4c-events", batch_size=10)
def on_event(event: SQSEvent) -> dict[str, Any]:
    """Apply each event; report the ones that failed so SQS redelivers only those."""
    failures = []
    events = _svc().events
    for record in event:
        try:
            events.handle_text(record.body)
        except Exception:
            log.exception("event %s failed; SQS will redeliver it", record.receipt_handle[:12])
            failures.append({"itemIdentifier": record.to_dict().get("messageId", "")})
    return {"batchItemFailures": failures}


@app.schedule(Rate(1, unit=Rate.MINUTES))
def reap(event: Any) -> dict[str, Any]:
    return _svc().reaper.run()
