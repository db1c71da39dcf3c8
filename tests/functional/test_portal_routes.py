"""The portal's static files through the Chalice test client."""

from __future__ import annotations

import pytest
from chalice.app import Chalice
from chalice.test import Client

from control_plane import portal_routes


@pytest.fixture
def client():
    app = Chalice(app_name="portal-test")
    app.register_blueprint(portal_routes.blueprint)
    with Client(app) as c:
        yield c


@pytest.mark.parametrize("path", ["/", "/login"])
def test_page_is_served_with_a_strict_policy(client, path):
    r = client.http.get(path)
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("text/html")
    assert "default-src 'self'" in r.headers["Content-Security-Policy"]
    assert r.headers["X-Frame-Options"] == "DENY"
    assert b'<script src="/portal/portal.js"' in r.body


def test_assets_have_their_types(client):
    js = client.http.get("/portal/portal.js")
    css = client.http.get("/portal/portal.css")
    assert js.status_code == 200 and js.headers["Content-Type"].startswith("text/javascript")
    assert css.status_code == 200 and css.headers["Content-Type"].startswith("text/css")


@pytest.mark.parametrize(
    "name", ["app.py", "..%2Fapp.py", "..%2F..%2Fpyproject.toml", "missing.js", "%2Fetc%2Fpasswd"]
)
def test_nothing_but_portal_files_is_served(client, name):
    r = client.http.get(f"/portal/{name}")
    assert r.status_code == 404
    assert r.json_body["error"]["code"] == "not_found"
