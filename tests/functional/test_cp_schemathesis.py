"""Schemathesis against ``/api/openapi.json``: no generated input may produce a 5xx, and every
answer has the schema the document gives it (generated from ``control_plane.replies``).

One moto mock and one real HTTP server (Chalice's local server on 127.0.0.1, port 0) serve every
generated case; the cases carry an admin session and its CSRF token, so they reach the handlers
instead of stopping at 401/403. Every 4xx must have the ``{"error": {"code", "message"}}`` shape.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import schemathesis
from chalice.config import Config as ChaliceConfig
from chalice.local import LocalDevServer
from hypothesis import HealthCheck, settings
from schemathesis.checks import response_schema_conformance

from control_plane.app import REQUEST_BODIES, app
from control_plane.bodies import NewImage
from control_plane.bootstrap import ensure_local_defaults
from control_plane.openapi import spec

from .conftest import cp_module_services

schema = schemathesis.openapi.from_dict(spec(app, REQUEST_BODIES))
PASSWORD = "schemathesis-admin-1"


@pytest.fixture(scope="module")
def cp_live() -> Iterator[dict[str, Any]]:
    with cp_module_services("st") as svc:
        ensure_local_defaults(PASSWORD, [NewImage(name="Tool", image="tool:1", port=80)],
                              svc)
        server = LocalDevServer(app, ChaliceConfig.create(), "127.0.0.1", 0)
        thread = threading.Thread(target=server.server.serve_forever, daemon=True)
        thread.start()
        base = f"http://127.0.0.1:{server.server.server_address[1]}"
        login = requests.post(f"{base}/api/login", json={"username": "admin",
                                                         "password": PASSWORD}, timeout=10)
        assert login.status_code == 200, login.text
        try:
            yield {"base": base, "cookie": login.headers["set-cookie"].split(";", 1)[0],
                   "csrf": login.json()["csrf_token"]}
        finally:
            server.shutdown()
            server.server.server_close()
            thread.join(timeout=5)


@pytest.mark.timeout(120)
@schema.parametrize()
@settings(max_examples=10, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
def test_no_input_makes_a_server_error(case: Any,
                                       cp_live: dict[str, Any]) -> None:
    if case.path == "/api/logout":
        return  # would end the shared session for every later case
    if case.method.upper() in ("TRACE", "QUERY", "CONNECT"):
        return  # answered (501) by the local HTTP server, never reaching the app
    headers = {"Cookie": cp_live["cookie"], "X-CSRF-Token": cp_live["csrf"]}
    response = case.call(base_url=cp_live["base"], headers=headers, timeout=10)
    assert response.status_code < 500, (case.method, case.path, response.text)
    case.validate_response(response, checks=[response_schema_conformance])
    if response.status_code >= 400 and not case.path.startswith("/oauth/"):  # RFC 6749 shape
        error = response.json()["error"]
        assert isinstance(error["code"], str) and isinstance(error["message"], str)
