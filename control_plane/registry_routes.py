"""HTTP routes of the image server's token service (Docker's token protocol).

- ``GET /registry/token?service=...&scope=...[&scope=...]``: a registry token for what of the
  scopes the caller may have (:class:`control_plane.registry.RegistryTokens`). A user sends
  HTTP Basic credentials (``docker login <registry>`` with a dit4c username and password does
  exactly that), a node its own signed token as ``Bearer``. Bad credentials: 401 with
  ``WWW-Authenticate: Basic``, so that Docker asks for them.
- ``GET /registry/ca.pem``: the certificate the image server must trust (its
  ``rootcertbundle``); public, like the JWKS.

Register with ``app.register_blueprint(registry_blueprint(get_registry=...))``.
"""

from __future__ import annotations

from collections.abc import Callable

from chalice.app import Blueprint, Response

from control_plane import web
from control_plane.errors import ControlPlaneError
from control_plane.registry import RegistryTokens


def registry_blueprint(*, get_registry: Callable[[], RegistryTokens]) -> Blueprint:
    bp = Blueprint(__name__)

    @bp.route("/registry/token", methods=["GET"])
    def token() -> Response:
        request = bp.current_request
        query = request.query_params
        # Chalice's getlist raises KeyError for an absent name.
        scopes = query.getlist("scope") if query is not None and "scope" in query else []
        service = query.get("service") if query is not None else None
        try:
            answer = get_registry().answer(
                authorization=request.headers.get("authorization"), service=service,
                scopes=scopes, address=web.client_address(request))
        except ControlPlaneError as exc:
            response = web.error_response(exc)
            if exc.status == 401:
                response.headers["WWW-Authenticate"] = 'Basic realm="dit4c registry"'
            return response
        return web.json_response(answer)

    @bp.route("/registry/ca.pem", methods=["GET"])
    def ca() -> Response:
        registry = get_registry()
        return Response(body=registry.keys.registry_ca().pem(), status_code=200,
                        headers={"Content-Type": "application/x-pem-file",
                                 "Cache-Control": "max-age=300"})

    return bp
