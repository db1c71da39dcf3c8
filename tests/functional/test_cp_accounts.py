"""Login, sessions, CSRF, throttling, admin-only routes, signing keys, catalog, error shape."""

from __future__ import annotations

import boto3
import pytest

from control_plane.__main__ import main
from control_plane.web import session_cookie
from protocol.errors import TokenError
from protocol.tokens import KeySet, tunnel_claims, verify_tunnel

from .conftest import ADMIN_PASSWORD


def test_login_sets_a_safe_cookie_and_me_answers(cp_admin, cp_client):
    browser = cp_client()
    r = browser.post("/api/login", {"username": "admin", "password": ADMIN_PASSWORD})
    assert r.status_code == 200
    cookie = {k.lower(): v for k, v in r.headers.items()}["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
    assert "Secure" not in cookie  # the test portal URL is http
    me = browser.get("/api/me")
    assert me.json["user"] == {"username": "admin", "admin": True, "provider": "local"}
    assert me.json["csrf_token"] == r.json["csrf_token"]


def test_secure_cookie_when_portal_is_https(cp_services):
    assert "Secure" in session_cookie("t", 10, secure=True)


def test_wrong_password_and_unknown_user_look_the_same(cp_admin, cp_client):
    a = cp_client().login("admin", "wrong-password")
    b = cp_client().login("nobody", "wrong-password")
    assert a.status_code == b.status_code == 401
    assert a.json == b.json


def test_state_changes_need_the_csrf_token(cp_admin):
    r = cp_admin.post("/api/clusters", {"name": "x"}, csrf=False)
    assert r.status_code == 403 and "CSRF" in r.json["error"]["message"]
    r = cp_admin.post("/api/clusters", {"name": "x"}, headers={"x-csrf-token": "forged"})
    assert r.status_code == 403
    assert cp_admin.post("/api/clusters", {"name": "x"}).status_code == 201


def test_form_posts_are_refused(cp_admin, cp_client):
    r = cp_client().request("POST", "/api/login", raw=b"username=admin&password=x",
                            headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 415
    assert r.json["error"]["code"] == "unsupported_media_type"


def test_logout_ends_the_session(cp_admin):
    assert cp_admin.post("/api/logout").status_code == 204
    assert cp_admin.get("/api/me").status_code == 401


def test_forged_session_cookie_is_refused(cp_client):
    browser = cp_client()
    browser.cookie = "dit4c_session=forged"
    assert browser.get("/api/me").status_code == 401


def test_repeated_failures_are_slowed_down_per_account(cp_admin, cp_client, cp_services):
    browser = cp_client()
    limit = cp_services.config.login_failures_per_account
    for _ in range(limit):
        assert browser.login("admin", "wrong-password").status_code == 401
    r = browser.login("admin", ADMIN_PASSWORD)  # even the right password waits now
    assert r.status_code == 429
    assert int({k.lower(): v for k, v in r.headers.items()}["retry-after"]) >= 1


def test_repeated_failures_are_slowed_down_per_address(cp_admin, cp_client, cp_services):
    browser = cp_client()
    for i in range(cp_services.config.login_failures_per_address):
        browser.login(f"user{i}", "wrong-password")
    assert browser.login("admin", ADMIN_PASSWORD).status_code == 429


def test_admins_create_users_others_cannot(cp_admin, cp_user):
    alice = cp_user("alice")
    assert alice.post("/api/users", {"username": "eve", "password": "password-1"}
                      ).status_code == 403
    assert cp_admin.post("/api/users", {"username": "alice", "password": "password-1"}
                         ).status_code == 409
    for bad in ({"username": "Bad Name", "password": "password-1"},
                {"username": "ok", "password": "short"},
                {"username": 5, "password": "password-1"},
                {"username": "ok", "password": "password-1", "admin": "yes"}):
        r = cp_admin.post("/api/users", bad)
        assert r.status_code == 400, bad


@pytest.mark.parametrize("raw", [b"{", b"[1, 2]", b'"text"', b"\xff\xfe"])
def test_malformed_json_is_400(cp_admin, raw):
    r = cp_admin.request("POST", "/api/clusters", raw=raw)
    assert r.status_code == 400
    assert set(r.json["error"]) == {"code", "message"}


def test_oversized_body_is_413(cp_admin):
    r = cp_admin.post("/api/clusters", {"name": "x" * 70_000})
    assert r.status_code == 413


def test_anonymous_calls_are_401(cp_client):
    browser = cp_client()
    for path in ("/api/me", "/api/images", "/api/instances", "/api/clusters"):
        assert browser.get(path).status_code == 401, path


def test_catalog_admin_add_update_remove(cp_admin, cp_user):
    entry = {"name": "Jupyter", "image": "jupyter/base:1", "port": 8888, "cpu": 2,
             "memory_mb": 2048, "tags": ["python"]}
    first = cp_admin.post("/api/images", entry)
    assert first.status_code == 201, first.body
    again = cp_admin.post("/api/images", {**entry, "name": "Jupyter Lab"})
    assert again.json["id"] == first.json["id"]  # upsert by image reference
    alice = cp_user("alice")
    images = alice.get("/api/images").json["images"]
    assert [(i["name"], i["kind"]) for i in images] == [("Jupyter Lab", "catalog")]
    assert alice.post("/api/images", entry).status_code == 403
    assert alice.delete(f"/api/images/{first.json['id']}").status_code == 403
    for bad in ({**entry, "port": 0}, {**entry, "image": "bad image"}, {**entry, "cpu": -1},
                {**entry, "tags": "x"}, {"name": "x"}):
        assert cp_admin.post("/api/images", bad).status_code == 400, bad
    assert cp_admin.delete(f"/api/images/{first.json['id']}").status_code == 204
    assert alice.get("/api/images").json["images"] == []
    assert cp_admin.delete(f"/api/images/{first.json['id']}").status_code == 404


def test_keys_rotate_without_breaking_issued_tokens(cp_services, cp_client):
    keys = cp_services.keys
    old = keys.current()
    token = keys.sign(tunnel_claims(issuer="x", instance_id="abc", hostname="abc.apps.test"))
    new = keys.rotate()
    keys._cached = None  # another process would see the new key once its cache expires
    jwks = cp_client().get("/.well-known/jwks.json").json
    assert [k["kid"] for k in jwks["keys"]] == [old.kid, new.kid]
    assert all("d" not in k for k in jwks["keys"])  # public members only
    verify_tunnel(token, KeySet.from_jwks(jwks), hostname="abc.apps.test")
    assert keys.current().kid == new.kid
    with pytest.raises(Exception, match="rotate first"):
        keys.retire(new.kid)
    keys.retire(old.kid)
    jwks = cp_client().get("/.well-known/jwks.json").json
    assert [k["kid"] for k in jwks["keys"]] == [new.kid]
    with pytest.raises(TokenError):
        verify_tunnel(token, KeySet.from_jwks(jwks), hostname="abc.apps.test")


def test_signing_key_is_a_secure_string(cp_services):
    cp_services.keys.current()
    ssm = boto3.client("ssm", region_name="us-east-1")
    param = ssm.get_parameter(Name=cp_services.config.signing_key_parameter)["Parameter"]
    assert param["Type"] == "SecureString"


def test_key_commands(cp_services, capsys):
    first = cp_services.keys.current().kid
    assert main(["keys", "rotate"]) == 0
    kids = capsys.readouterr().out.split()
    assert kids[1:] == [first, kids[0]]
    assert main(["keys", "retire", first]) == 0
    assert capsys.readouterr().out.split() == [kids[0]]
    assert main(["keys", "bogus"]) == 2
