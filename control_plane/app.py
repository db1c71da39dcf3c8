"""The Chalice app: HTTP routes mapped to domain calls, nothing more.

Entry points (docs/contracts.md): ``app`` (API), ``on_event`` (events queue consumer),
``reap`` (scheduled reaper). Domain objects come from :func:`control_plane.services.current`,
built on first use so that importing this module stays cheap (Lambda cold starts).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from chalice.app import Rate, Request, Response, SQSEvent

from control_plane import bodies, portal_routes, replies, web
from control_plane.accounts import DEVICE_SECONDS, Session, User
from control_plane.bodies import Body
from control_plane.gateway import GatewayChalice
from control_plane.login_providers import LOGIN_COOKIE, LOGIN_PATH, STATE_SECONDS
from control_plane.oauth_routes import oauth_blueprint
from control_plane.openapi import spec
from control_plane.records import NodeStatus
from control_plane.registry_routes import registry_blueprint
from protocol.tokens import unverified_claims

if TYPE_CHECKING:
    from control_plane.services import Services

# API Gateway sends every request through one catch-all route: see control_plane/gateway.py.
app = GatewayChalice(app_name="dit4c")
app.log.setLevel(logging.INFO)
app.register_middleware(web.rewrite_framework_errors, "http")
log = logging.getLogger("dit4c.control_plane.app")


def _svc() -> Services:
    # The domain modules (~25 ms) load at the first request that needs them: the portal's
    # pages and this document do not.
    from control_plane import services  # noqa: PLC0415

    return services.current()


def _session_username(request: Request) -> str | None:
    svc = _svc()
    session = web.session_of(request, svc.accounts.session, secure=svc.config.secure_cookies)
    return session.user.username if session else None


app.register_blueprint(portal_routes.blueprint)
app.register_blueprint(oauth_blueprint(get_server=lambda: _svc().oauth,
                                       session_username=_session_username))
app.register_blueprint(registry_blueprint(get_registry=lambda: _svc().registry))

REQUEST_BODIES: dict[tuple[str, str], type[Body]] = {}
"""The body type of each route that takes one: it parses the body and is its OpenAPI schema."""
Auth = Literal["session", "admin"] | None


def route(path: str, method: str = "GET", status: int = 200, *, auth: Auth = None,
          body: type[Body] | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a view. ``auth``: it gets the caller's ``session`` (CSRF checked on changes;
    ``"admin"`` also requires an admin); ``body``: it gets the request body parsed as ``body``.
    Checks run in that order, before the view: 401/403, then 400/413, then the view's own."""

    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def view(**params: str) -> Any:
            kwargs: dict[str, Any] = dict(params)
            if auth is not None:
                kwargs["session"] = _session()
                if auth == "admin":
                    web.require_admin(kwargs["session"])
            if body is not None:
                kwargs["body"] = body.parse(web.body(_request()))
            return fn(**kwargs)

        app.route(path, methods=[method], content_types=["application/json"])(
            web.endpoint(view, status))
        if body is not None:
            REQUEST_BODIES[(method, path)] = body
        return fn

    return register


def _request() -> Request:
    request = app.current_request
    assert request is not None, "only called while handling a request"
    return request


def _session() -> Session:
    svc = _svc()
    return web.require_session(_request(), svc.accounts.session,
                               secure=svc.config.secure_cookies)


# --- health, keys, spec -----------------------------------------------------------------


@route("/api/health")
def health() -> Response:
    report = _svc().health()
    return web.json_response(report, 200 if report.status == "ok" else 503)


@route("/.well-known/jwks.json")
def jwks() -> Response:
    return web.json_response(replies.JWKS(**_svc().keys.jwks()),
                             headers={"Cache-Control": "max-age=300"})


@route("/api/openapi.json")
def openapi() -> dict[str, Any]:
    return spec(app, REQUEST_BODIES)


# --- accounts ---------------------------------------------------------------------------


@route("/api/login", "POST", body=bodies.Login)
def login(body: bodies.Login) -> Response:
    svc = _svc()
    secure = svc.config.secure_cookies
    request = _request()
    done = svc.accounts.login(body, web.client_address(request),
                              web.cookie_value(request, web.DEVICE_COOKIE, secure=secure))
    session = done.session
    cookies = [web.session_cookie(session.session_id, svc.config.session_seconds,
                                  secure=secure),
               web.cookie(web.DEVICE_COOKIE, done.device, DEVICE_SECONDS, secure=secure)]
    return web.json_response(replies.Session(user=session.user, csrf_token=session.csrf_token),
                             headers={"Set-Cookie": cookies})


@route("/api/logout", "POST")
def logout() -> Response:
    svc = _svc()
    secure = svc.config.secure_cookies
    if web.session_of(_request(), svc.accounts.session, secure=secure) is not None:
        session = _session()
        svc.accounts.end_session(session.session_id)
        svc.lifecycle.end_instance_sessions(session.user)
    cookie = web.session_cookie("", 0, secure=secure)
    return Response(body="", status_code=204, headers={"Set-Cookie": cookie})


@route("/api/login/providers")
def login_providers() -> replies.Providers:
    return replies.Providers(providers=_svc().logins.listing())


@route("/api/login/{provider}")
def login_start(provider: str) -> Response:
    svc = _svc()
    query: Any = _request().query_params or {}
    next_path = query.get("next")
    location, binding = svc.logins.start(provider, next_path if isinstance(next_path, str)
                                         else None)
    cookie = web.cookie(LOGIN_COOKIE, binding, STATE_SECONDS, path=LOGIN_PATH,
                        secure=svc.config.secure_cookies)
    return Response(body="", status_code=302, headers={"Location": location,
                                                       "Set-Cookie": cookie,
                                                       "Cache-Control": "no-store"})


@route("/api/login/{provider}/callback")
def login_callback(provider: str) -> Response:
    svc = _svc()
    request = _request()
    params = {k: v for k, v in (request.query_params or {}).items() if isinstance(v, str)}
    secure = svc.config.secure_cookies
    session, next_path = svc.logins.finish(
        provider, params, web.cookie_value(request, LOGIN_COOKIE, secure=secure,
                                           path=LOGIN_PATH))
    cookies = [web.session_cookie(session.session_id, svc.config.session_seconds,
                                  secure=secure),
               web.cookie(LOGIN_COOKIE, "", 0, path=LOGIN_PATH, secure=secure)]
    return Response(body="", status_code=302, headers={"Location": next_path,
                                                       "Set-Cookie": cookies,
                                                       "Cache-Control": "no-store"})


@route("/api/me", auth="session")
def me(session: Session) -> replies.Session:
    return replies.Session(user=session.user, csrf_token=session.csrf_token)


@route("/api/users", "POST", 201, auth="admin", body=bodies.NewUser)
def create_user(session: Session, body: bodies.NewUser) -> User:
    return _svc().accounts.create_user(body)


# --- storage ----------------------------------------------------------------------------


def _storage_use(username: str, *, fresh: bool = False) -> replies.StorageUse:
    storage = _svc().storage
    used, counted_at = storage.usage(username, fresh=fresh)
    return replies.StorageUse(username=username, used_bytes=used,
                              quota_bytes=storage.quota_bytes(username), counted_at=counted_at)


@route("/api/storage", auth="session")
def my_storage(session: Session) -> replies.StorageUse:
    return _storage_use(session.user.username)


@route("/api/users/{username}/storage", auth="admin")
def user_storage(session: Session, username: str) -> replies.StorageUse:
    return _storage_use(username)


@route("/api/users/{username}/storage", "PUT", auth="admin", body=bodies.StorageQuota)
def set_user_quota(session: Session, username: str, body: bodies.StorageQuota
                   ) -> replies.StorageUse:
    _svc().storage.set_quota(username, body.quota_mb)
    return _storage_use(username)


# --- images -----------------------------------------------------------------------------


@route("/api/images", auth="session")
def list_images(session: Session) -> replies.Images:
    return replies.Images(images=[replies.Image.of(i)
                                  for i in _svc().catalog.list_for(session.user.username)])


@route("/api/images", "POST", 201, auth="admin", body=bodies.NewImage)
def add_image(session: Session, body: bodies.NewImage) -> replies.Image:
    return replies.Image.of(_svc().catalog.add(body))


@route("/api/images/{image_id}", "DELETE", auth="session")
def delete_image(session: Session, image_id: str) -> None:
    _svc().images.delete(session.user, image_id)


@route("/api/images/{image_id}/share", auth="session")
def image_sharing(session: Session, image_id: str) -> replies.ImageShared:
    return _svc().images.sharing(session.user, image_id)


@route("/api/images/{image_id}/share", "POST", auth="session", body=bodies.ImageShare)
def share_image(session: Session, image_id: str, body: bodies.ImageShare
                ) -> replies.ImageShared:
    return _svc().images.share(session.user, image_id, body)


@route("/api/images/links", "POST", auth="session", body=bodies.AcceptLink)
def accept_image_link(session: Session, body: bodies.AcceptLink) -> replies.Image:
    return replies.Image.of(_svc().images.accept(session.user, body))


@route("/api/images/{image_id}/export", "POST", auth="session")
def export_image(session: Session, image_id: str) -> replies.ExportLink:
    return _svc().images.export(session.user, image_id)


# --- instances --------------------------------------------------------------------------


@route("/api/instances", "POST", 202, auth="session", body=bodies.Launch)
def launch(session: Session, body: bodies.Launch) -> replies.Instance:
    return replies.Instance.of(_svc().lifecycle.launch(session.user, body))


@route("/api/instances", auth="session")
def list_instances(session: Session) -> replies.Instances:
    query: Any = _request().query_params or {}
    lifecycle = _svc().lifecycle
    items = lifecycle.list_all(session.user) if query.get("all") in ("1", "true") \
        else lifecycle.list_for(session.user)
    return replies.Instances(instances=[replies.Instance.of(i) for i in items])


@route("/api/instances/{instance_id}", auth="session")
def get_instance(session: Session, instance_id: str) -> replies.Instance:
    return replies.Instance.of(_svc().lifecycle.visible(session.user, instance_id))


@route("/api/instances/{instance_id}/stop", "POST", 202, auth="session")
def stop_instance(session: Session, instance_id: str) -> replies.Instance:
    return replies.Instance.of(_svc().lifecycle.stop(session.user, instance_id))


@route("/api/instances/{instance_id}/save", "POST", 202, auth="session")
def save_instance(session: Session, instance_id: str) -> replies.Instance:
    return replies.Instance.of(_svc().lifecycle.save(session.user, instance_id))


@route("/api/instances/{instance_id}/discard", "POST", 202, auth="session")
def discard_instance(session: Session, instance_id: str) -> replies.Instance:
    return replies.Instance.of(_svc().lifecycle.discard(session.user, instance_id))


@route("/api/instances/{instance_id}", "DELETE", auth="session")
def delete_instance(session: Session, instance_id: str) -> None:
    _svc().lifecycle.delete(session.user, instance_id)


@route("/api/instances/{instance_id}/share", auth="session")
def instance_sharing(session: Session, instance_id: str) -> replies.Shared:
    return replies.Shared(id=instance_id, shared_with=_svc().lifecycle.sharing(
        session.user, instance_id))


@route("/api/instances/{instance_id}/share", "POST", auth="session", body=bodies.Share)
def share_instance(session: Session, instance_id: str, body: bodies.Share) -> replies.Shared:
    return replies.Shared(id=instance_id, shared_with=_svc().lifecycle.share(
        session.user, instance_id, body))


# --- clusters and nodes -----------------------------------------------------------------


@route("/api/clusters", "POST", 201, auth="admin", body=bodies.NewCluster)
def create_cluster(session: Session, body: bodies.NewCluster) -> replies.Cluster:
    return replies.Cluster.of(_svc().nodes.create_cluster(body.name, public=body.public,
                                                          users=body.users))


@route("/api/clusters/{cluster_id}/access", "POST", auth="admin", body=bodies.ClusterAccess)
def set_cluster_access(session: Session, cluster_id: str,
                       body: bodies.ClusterAccess) -> replies.Cluster:
    return replies.Cluster.of(_svc().nodes.set_access(cluster_id, body))


@route("/api/clusters", auth="admin")
def list_clusters(session: Session) -> replies.Clusters:
    return replies.Clusters(clusters=[replies.Cluster.of(c)
                                      for c in _svc().nodes.all_clusters()])


@route("/api/clusters/{cluster_id}/join-tokens", "POST", 201, auth="admin",
       body=bodies.NewJoinToken)
def create_join_token(session: Session, cluster_id: str,
                      body: bodies.NewJoinToken) -> replies.JoinToken:
    return _svc().nodes.create_join_token(cluster_id, hours=body.hours,
                                          created_by=session.user.username)


@route("/api/clusters/{cluster_id}/join-tokens", auth="admin")
def list_join_tokens(session: Session, cluster_id: str) -> replies.JoinTokens:
    return replies.JoinTokens(join_tokens=[replies.JoinTokenInfo.of(g) for g in
                                           _svc().nodes.join_tokens(cluster_id)])


@route("/api/clusters/{cluster_id}/join-tokens/{token_id}", "DELETE", auth="admin")
def revoke_join_token(session: Session, cluster_id: str, token_id: str) -> None:
    _svc().nodes.revoke_join_token(cluster_id, token_id)


@route("/api/clusters/{cluster_id}/nodes", auth="admin")
def list_nodes(session: Session, cluster_id: str) -> replies.Nodes:
    nodes = _svc().nodes
    nodes.get_cluster(cluster_id)
    return replies.Nodes(nodes=[replies.Node.of(n) for n in nodes.in_cluster(cluster_id)])


@route("/api/nodes/enroll", "POST", 201, body=bodies.Enroll)
def enroll(body: bodies.Enroll) -> replies.Enrolled:
    return _svc().nodes.enroll(body)


@route("/api/nodes/{node_id}/credentials", "POST")
def node_credentials(node_id: str) -> replies.Credentials:
    return _svc().nodes.credentials(node_id, _request().headers.get("authorization"))


@route("/api/nodes/{node_id}", "DELETE")
def withdraw_node(node_id: str) -> None:
    _svc().nodes.withdraw(node_id, _request().headers.get("authorization"))


@route("/api/nodes/{node_id}/instances/{instance_id}/tunnel-token", "POST")
def renew_tunnel_token(node_id: str, instance_id: str) -> replies.TunnelToken:
    svc = _svc()
    node = svc.nodes.authenticate(node_id, _request().headers.get("authorization"))
    token = svc.scheduler.renew_tunnel_token(node, instance_id)
    return replies.TunnelToken(tunnel_token=token,
                               expires_at=int(unverified_claims(token)["exp"]))


@route("/api/revocations")
def revocations() -> Response:
    listed = [replies.Revoked(host_sha256=r.host_sha256, revoked_at=r.revoked_at,
                              expires_at=r.expires_at)
              for r in _svc().messenger.revocations.active()]
    return web.json_response(replies.Revocations(revocations=listed),
                             headers={"Cache-Control": "no-store"})


@route("/api/nodes/{node_id}/instances")
def node_instances(node_id: str) -> replies.Placed:
    svc = _svc()
    svc.nodes.authenticate(node_id, _request().headers.get("authorization"))
    return replies.Placed.of(svc.instances.on_node(node_id))


@route("/api/nodes/{node_id}/instances/{instance_id}/storage", "POST",
       body=bodies.StorageReport)
def node_instance_storage(node_id: str, instance_id: str, body: bodies.StorageReport
                          ) -> replies.StorageSession:
    """A node renews the storage credentials of an instance it runs (its JWT, as for
    ``credentials``), reporting how the instance's storage helper is."""
    return replies.StorageSession.of(_svc().storage.renew(
        node_id, instance_id, _request().headers.get("authorization"), ok=body.ok,
        message=body.message, usage_bytes=body.usage_bytes))


@route("/api/nodes/{node_id}/drain", "POST", auth="admin")
def drain_node(session: Session, node_id: str) -> replies.Node:
    return replies.Node.of(_svc().nodes.set_status(node_id, NodeStatus.DRAINING))


@route("/api/nodes/{node_id}/activate", "POST", auth="admin")
def activate_node(session: Session, node_id: str) -> replies.Node:
    return replies.Node.of(_svc().nodes.set_status(node_id, NodeStatus.ACTIVE))


@route("/api/nodes/{node_id}/decommission", "POST", auth="admin")
def decommission_node(session: Session, node_id: str) -> replies.Node:
    return replies.Node.of(_svc().nodes.set_status(node_id, NodeStatus.DECOMMISSIONED))


# --- events and schedule ----------------------------------------------------------------


@app.on_sqs_message(queue="dit4c-events", batch_size=10)
def on_event(event: SQSEvent) -> dict[str, Any]:
    """Apply each event; report the ones that failed so SQS redelivers only those."""
    failures = []
    events = _svc().events
    for record in event:
        try:
            events.handle_record(record.to_dict())
        except Exception:
            log.exception("event %s failed; SQS will redeliver it", record.receipt_handle[:12])
            failures.append({"itemIdentifier": record.to_dict().get("messageId", "")})
    return {"batchItemFailures": failures}


@app.schedule(Rate(1, unit=Rate.MINUTES))
def reap(event: Any) -> dict[str, Any]:
    return _svc().reaper.run()
