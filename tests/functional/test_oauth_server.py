"""The portal's OAuth2 server through its HTTP routes (Chalice test client, moto DynamoDB).

The server's tables are the template's (one stack for the module, every test with its own
instances), reached as the API function reaches them: its calls are held to its policies.

Every attack of issue 6 that the server itself must refuse is tried here: a tampered
redirect_uri, a replayed code, a code issued for another instance, a wrong PKCE verifier, an
expired code, wrong client credentials.
"""

from __future__ import annotations

import base64
import json
import secrets
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from chalice.test import Client

from control_plane.config import Config
from control_plane.oauth import CODE_LIFETIME, InvalidRequest
from control_plane.table import Table
from infra.local.template import Template
from protocol.errors import TokenError
from protocol.tokens import (
    KeySet,
    instance_audience,
    pkce_challenge,
    verify_access,
    verify_revocation,
)
from tests.support.auth_harness import PortalHarness
from tests.support.iam_clients import attribute_calls

from .conftest import cp_gated_clients, cp_module_stack

A_REDIRECT = "http://a.dit4c.test/.dit4c/auth/callback"
B_REDIRECT = "http://b.dit4c.test/.dit4c/auth/callback"


@pytest.fixture(scope="module")
def stack():
    with cp_module_stack("oa") as made:
        yield made


@pytest.fixture
def portal(stack):
    config = Config.from_env(stack.environment)
    dynamodb = cp_gated_clients(stack, config).get("dynamodb")
    harness = PortalHarness(tables=(Table(dynamodb, config.tables.oauth_clients),
                                    Table(dynamodb, config.tables.tokens)))
    attribute_calls(harness.app, Template.load())
    harness.access = {"a": {"alice", "sam"}, "b": {"bob"}}
    return harness


@pytest.fixture
def http(portal):
    with Client(portal.app) as client:
        yield client.http


@pytest.fixture
def clients(portal):
    return {"a": portal.server.register_client("a", A_REDIRECT),
            "b": portal.server.register_client("b", B_REDIRECT)}


def login(portal, username):
    sid = secrets.token_urlsafe(8)
    portal.sessions[sid] = username
    return {"Cookie": f"portal_session={sid}"}


def authorize(http, headers, client_id, redirect_uri, challenge, **extra):
    params = {"response_type": "code", "client_id": client_id, "redirect_uri": redirect_uri,
              "code_challenge": challenge, "code_challenge_method": "S256", "state": "st8",
              **extra}
    return http.get("/oauth/authorize?" + urlencode(params), headers=headers)


def code_from(response):
    assert response.status_code == 302, response.body
    query = parse_qs(urlsplit(response.headers["Location"]).query)
    assert query["state"] == ["st8"]
    return query["code"][0]


def basic(client_id, secret):
    raw = f"{client_id}:{secret}".encode()
    return {"Authorization": "Basic " + base64.b64encode(raw).decode()}


def token(http, form, auth_headers):
    response = http.post("/oauth/token", body=urlencode(form), headers={
        "Content-Type": "application/x-www-form-urlencoded", **auth_headers})
    return response.status_code, json.loads(response.body), response.headers


def new_verifier():
    verifier = secrets.token_urlsafe(48)
    return verifier, pkce_challenge(verifier)


def code_for(portal, http, clients, *, user="alice", instance="a", redirect=A_REDIRECT):
    verifier, challenge = new_verifier()
    code = code_from(authorize(http, login(portal, user), clients[instance][0], redirect,
                               challenge))
    return code, verifier


def exchange(http, clients, code, verifier, *, instance="a", redirect=A_REDIRECT):
    return token(http, {"grant_type": "authorization_code", "code": code,
                        "redirect_uri": redirect, "code_verifier": verifier},
                 basic(*clients[instance]))


# --- the happy paths --------------------------------------------------------------------------


def test_owner_gets_an_access_token_for_this_instance_only(portal, http, clients):
    code, verifier = code_for(portal, http, clients)
    status, body, headers = exchange(http, clients, code, verifier)
    assert status == 200, body
    assert headers["Cache-Control"] == "no-store"
    assert body["token_type"] == "Bearer" and body["expires_in"] == 300
    keys = KeySet.from_jwks(portal.jwks())
    claims = verify_access(body["access_token"], keys, instance_id="a")
    assert claims["sub"] == "alice" and claims["aud"] == instance_audience("a")
    assert claims["iss"] == "http://portal.test"
    with pytest.raises(TokenError, match="another audience"):
        verify_access(body["access_token"], keys, instance_id="b")


def test_user_the_instance_is_shared_with_gets_in(portal, http, clients):
    code, verifier = code_for(portal, http, clients, user="sam")
    status, body, _ = exchange(http, clients, code, verifier)
    assert status == 200
    claims = verify_access(body["access_token"], KeySet.from_jwks(portal.jwks()), instance_id="a")
    assert claims["sub"] == "sam"


def test_client_authentication_in_the_form_works_too(portal, http, clients):
    code, verifier = code_for(portal, http, clients)
    client_id, secret = clients["a"]
    status, body, _ = token(http, {"grant_type": "authorization_code", "code": code,
                                   "redirect_uri": A_REDIRECT, "code_verifier": verifier,
                                   "client_id": client_id, "client_secret": secret}, {})
    assert status == 200, body


def test_anonymous_authorize_goes_to_login_and_comes_back(portal, http, clients):
    _, challenge = new_verifier()
    response = authorize(http, {}, clients["a"][0], A_REDIRECT, challenge)
    assert response.status_code == 302
    location = urlsplit(response.headers["Location"])
    assert location.path == "/login"
    back = parse_qs(location.query)["next"][0]
    assert back.startswith("/oauth/authorize?")
    # After login the browser replays exactly the original request.
    assert parse_qs(urlsplit(back).query)["code_challenge"] == [challenge]
    response = http.get(back, headers=login(portal, "alice"))
    assert code_from(response)


def test_refresh_rotates_and_rechecks_access(portal, http, clients):
    code, verifier = code_for(portal, http, clients, user="sam")
    _, first, _ = exchange(http, clients, code, verifier)
    status, second, _ = token(http, {"grant_type": "refresh_token",
                                     "refresh_token": first["refresh_token"]}, basic(*clients["a"]))
    assert status == 200, second
    assert second["refresh_token"] != first["refresh_token"]
    portal.access["a"].discard("sam")  # the share is revoked
    status, body, _ = token(http, {"grant_type": "refresh_token",
                                   "refresh_token": second["refresh_token"]}, basic(*clients["a"]))
    assert (status, body["error"]) == (400, "invalid_grant")
    assert "no longer" in body["error_description"]


def test_discarded_instance_refresh_fails(portal, http, clients):
    code, verifier = code_for(portal, http, clients)
    _, first, _ = exchange(http, clients, code, verifier)
    portal.server.delete_client("a")
    portal.server.delete_client("a")  # twice is fine
    status, body, headers = token(http, {"grant_type": "refresh_token",
                                         "refresh_token": first["refresh_token"]},
                                  basic(*clients["a"]))
    assert (status, body["error"]) == (401, "invalid_client")
    assert headers["WWW-Authenticate"].startswith("Basic")


def test_client_secret_is_stored_hashed(portal, clients):
    client_id, secret = clients["a"]
    stored = json.dumps(list(portal.clients_table.scan()), default=str)
    assert client_id in stored and secret not in stored


def test_codes_and_refresh_tokens_are_stored_hashed(portal, http, clients):
    code, verifier = code_for(portal, http, clients)
    _, body, _ = exchange(http, clients, code, verifier)
    stored = json.dumps(list(portal.tokens_table.scan()), default=str)
    assert code not in stored and body["refresh_token"] not in stored
    assert "oauth-code#" in stored and "oauth-refresh#" in stored


# --- attacks ----------------------------------------------------------------------------------


@pytest.mark.parametrize("redirect", [
    "http://evil.test/.dit4c/auth/callback",
    A_REDIRECT + "/../../steal",
    A_REDIRECT + "?x=1",
    "http://a.dit4c.test.evil.test/.dit4c/auth/callback",
    B_REDIRECT,
])
def test_tampered_redirect_uri_is_refused_without_redirecting(portal, http, clients, redirect):
    _, challenge = new_verifier()
    response = authorize(http, login(portal, "alice"), clients["a"][0], redirect, challenge)
    assert response.status_code == 400
    assert "Location" not in response.headers
    assert json.loads(response.body)["error"] == "invalid_request"


def test_token_request_with_another_redirect_uri_is_refused(portal, http, clients):
    code, verifier = code_for(portal, http, clients)
    status, body, _ = exchange(http, clients, code, verifier, redirect=A_REDIRECT + "x")
    assert (status, body["error"]) == (400, "invalid_grant")


def test_replayed_code_is_refused_and_revokes_its_grant(portal, http, clients):
    code, verifier = code_for(portal, http, clients)
    status, first, _ = exchange(http, clients, code, verifier)
    assert status == 200
    status, body, _ = exchange(http, clients, code, verifier)
    assert (status, body["error"]) == (400, "invalid_grant")
    assert "already used" in body["error_description"]
    # Whoever got the first tokens may be the attacker: the grant's refresh token dies too.
    status, body, _ = token(http, {"grant_type": "refresh_token",
                                   "refresh_token": first["refresh_token"]}, basic(*clients["a"]))
    assert (status, body["error"]) == (400, "invalid_grant")


def test_replayed_refresh_token_is_refused(portal, http, clients):
    code, verifier = code_for(portal, http, clients)
    _, first, _ = exchange(http, clients, code, verifier)
    form = {"grant_type": "refresh_token", "refresh_token": first["refresh_token"]}
    assert token(http, form, basic(*clients["a"]))[0] == 200
    status, body, _ = token(http, form, basic(*clients["a"]))
    assert (status, body["error"]) == (400, "invalid_grant")


def test_code_issued_for_another_instance_is_refused(portal, http, clients):
    portal.access["b"].add("alice")
    code, verifier = code_for(portal, http, clients)  # for instance a
    status, body, _ = exchange(http, clients, code, verifier, instance="b", redirect=B_REDIRECT)
    assert (status, body["error"]) == (400, "invalid_grant")
    assert "another client" in body["error_description"]


@pytest.mark.parametrize("verifier", [secrets.token_urlsafe(48), "short", ""])
def test_code_without_the_right_pkce_verifier_is_refused(portal, http, clients, verifier):
    code, right = code_for(portal, http, clients)
    status, body, _ = exchange(http, clients, code, verifier)
    assert status == 400 and body["error"] in ("invalid_grant", "invalid_request")
    if body["error"] == "invalid_grant":
        # A wrong guess spends the code: no second try, even with the right verifier.
        assert exchange(http, clients, code, right)[1]["error"] == "invalid_grant"


@pytest.mark.parametrize("method", ["plain", "", "s256"])
def test_pkce_other_than_s256_is_refused(portal, http, clients, method):
    _, challenge = new_verifier()
    response = authorize(http, login(portal, "alice"), clients["a"][0], A_REDIRECT, challenge,
                         code_challenge_method=method)
    query = parse_qs(urlsplit(response.headers["Location"]).query)
    assert query["error"] == ["invalid_request"] and query["state"] == ["st8"]
    assert "code" not in query


def test_oversized_state_is_refused_without_echoing_it(portal, http, clients):
    _, challenge = new_verifier()
    response = authorize(http, login(portal, "alice"), clients["a"][0], A_REDIRECT, challenge,
                         state="x" * 5000)
    query = parse_qs(urlsplit(response.headers["Location"]).query)
    assert query["error"] == ["invalid_request"] and "state" not in query


def test_missing_challenge_is_refused(portal, http, clients):
    response = authorize(http, login(portal, "alice"), clients["a"][0], A_REDIRECT, "")
    assert parse_qs(urlsplit(response.headers["Location"]).query)["error"] == ["invalid_request"]


def test_expired_code_is_refused(portal, http, clients):
    code, verifier = code_for(portal, http, clients)
    portal.now_offset = CODE_LIFETIME + 1
    status, body, _ = exchange(http, clients, code, verifier)
    assert (status, body["error"]) == (400, "invalid_grant")
    assert "expired" in body["error_description"]


def test_other_user_is_denied_with_a_403_page(portal, http, clients):
    _, challenge = new_verifier()
    browser = {**login(portal, "bob"), "Accept": "text/html,*/*"}
    response = authorize(http, browser, clients["a"][0], A_REDIRECT, challenge)
    assert response.status_code == 403
    assert "Location" not in response.headers
    assert response.headers["Content-Type"].startswith("text/html")
    assert "Access denied" in response.body.decode()
    assert "bob may not use instance a" in response.body.decode()
    response = authorize(http, login(portal, "bob"), clients["a"][0], A_REDIRECT, challenge)
    assert (response.status_code, json.loads(response.body)["error"]) == (403, "access_denied")


def test_access_revoked_between_authorize_and_token_is_refused(portal, http, clients):
    code, verifier = code_for(portal, http, clients, user="sam")
    portal.access["a"].discard("sam")
    assert exchange(http, clients, code, verifier)[1]["error"] == "invalid_grant"


@pytest.mark.parametrize("auth", [
    lambda c: basic(c[0], "wrong"),
    lambda c: basic("instance-nope", c[1]),
    lambda c: {"Authorization": "Basic !!!"},
    lambda c: {"Authorization": "Bearer x"},
    lambda c: {},
])
def test_bad_client_authentication_is_refused(portal, http, clients, auth):
    code, verifier = code_for(portal, http, clients)
    status, body, headers = token(http, {"grant_type": "authorization_code", "code": code,
                                         "redirect_uri": A_REDIRECT, "code_verifier": verifier},
                                  auth(clients["a"]))
    assert (status, body["error"]) == (401, "invalid_client")
    assert "WWW-Authenticate" in headers


def test_another_clients_secret_does_not_authenticate(portal, http, clients):
    code, verifier = code_for(portal, http, clients)
    status, body, _ = token(http, {"grant_type": "authorization_code", "code": code,
                                   "redirect_uri": A_REDIRECT, "code_verifier": verifier},
                            basic(clients["a"][0], clients["b"][1]))
    assert (status, body["error"]) == (401, "invalid_client")


def test_re_registering_replaces_the_secret(portal, http, clients):
    portal.server.register_client("a", A_REDIRECT)
    code, verifier = code_for(portal, http, clients)
    assert exchange(http, clients, code, verifier)[1]["error"] == "invalid_client"


@pytest.mark.parametrize(("form", "error"), [
    ({"grant_type": "password", "username": "x", "password": "y"}, "unsupported_grant_type"),
    ({}, "invalid_request"),
    ({"grant_type": "authorization_code", "code": "", "code_verifier": "x" * 43},
     "invalid_request"),
    ({"grant_type": "authorization_code", "code": "made-up", "code_verifier": "x" * 43,
      "redirect_uri": A_REDIRECT}, "invalid_grant"),
    ({"grant_type": "refresh_token", "refresh_token": "made-up"}, "invalid_grant"),
])
def test_bad_token_requests_get_rfc_errors(portal, http, clients, form, error):
    status, body, _ = token(http, form, basic(*clients["a"]))
    assert (status, body["error"]) == (400, error)
    assert body["error_description"]


def test_repeated_parameters_are_refused(portal, http, clients):
    _, challenge = new_verifier()
    query = urlencode({"response_type": "code", "client_id": clients["a"][0],
                       "code_challenge": challenge, "code_challenge_method": "S256"})
    response = http.get(f"/oauth/authorize?{query}&redirect_uri={A_REDIRECT}"
                        f"&redirect_uri=http://evil.test/",
                        headers=login(portal, "alice"))
    assert response.status_code == 400 and "Location" not in response.headers


def test_unknown_client_and_bad_scope(portal, http, clients):
    _, challenge = new_verifier()
    response = authorize(http, login(portal, "alice"), "instance-nope", A_REDIRECT, challenge)
    assert response.status_code == 400 and "Location" not in response.headers
    response = authorize(http, login(portal, "alice"), clients["a"][0], A_REDIRECT, challenge,
                         scope="admin")
    assert parse_qs(urlsplit(response.headers["Location"]).query)["error"] == ["invalid_scope"]
    response = authorize(http, login(portal, "alice"), clients["a"][0], A_REDIRECT, challenge,
                         response_type="token")
    query = parse_qs(urlsplit(response.headers["Location"]).query)
    assert query["error"] == ["unsupported_response_type"]


def test_register_refuses_a_bad_redirect_uri(portal):
    for bad in ("javascript:alert(1)", "/relative", "http://a.test/cb#frag"):
        with pytest.raises(InvalidRequest):
            portal.server.register_client("c", bad)


def test_back_channel_to_an_unreachable_helper_reports_failure(portal, clients):
    # Port 1 on loopback: nothing listens, the connection is refused at once.
    assert portal.server.notify_revoked("a", "http://a.dit4c.test", "sam",
                                        via="http://127.0.0.1:1") is False
    request = portal.server.revocation_request("a", "http://a.dit4c.test:8080", "sam",
                                               via="http://127.0.0.1:8080")
    assert request.url == "http://127.0.0.1:8080/.dit4c/auth/revoke"
    assert request.headers["Host"] == "a.dit4c.test:8080"
    token = request.headers["Authorization"].removeprefix("Bearer ")
    claims = verify_revocation(token, KeySet.from_jwks(portal.jwks()), instance_id="a",
                               issuer=portal.issuer)
    assert claims["sub"] == "sam"


def test_back_channel_to_a_localhost_instance_goes_to_loopback(portal):
    request = portal.server.revocation_request("a", "http://a.localhost:8080", "sam")
    assert request.url == "http://127.0.0.1:8080/.dit4c/auth/revoke"
    assert request.headers["Host"] == "a.localhost:8080"


@pytest.mark.parametrize(("body", "headers"), [
    (b"", {}),
    (b"\xff\xfe\x00", {}),
    (b"grant_type=authorization_code&code=%ff%fe&code_verifier=" + b"a" * 43, {}),
    (b"a" * 20000, {}),
    (b"grant_type=refresh_token&refresh_token=x", {"Authorization": "Basic"}),
    (b"grant_type=refresh_token&refresh_token=x",
     {"Authorization": "Basic " + base64.b64encode(b"\xff\xfe:\x00").decode()}),
    (b"grant_type=refresh_token&refresh_token=x", {"Authorization": "Basic " + "A" * 5000}),
    (b"grant_type=refresh_token&grant_type=refresh_token", {}),
    (b"client_id=&client_secret=", {}),
])
def test_garbage_at_the_token_endpoint_gets_a_4xx(portal, http, clients, body, headers):
    response = http.post("/oauth/token", body=body, headers={
        "Content-Type": "application/x-www-form-urlencoded", **basic(*clients["a"]), **headers})
    assert 400 <= response.status_code < 500, response.body
    assert json.loads(response.body)["error"]


@pytest.mark.parametrize("query", [
    "", "client_id=%ff", "redirect_uri=%00&client_id=instance-a", "state=" + "%ff" * 10,
    "client_id=instance-a&redirect_uri=http%3A%2F%2Fa.dit4c.test%2F.dit4c%2Fauth%2Fcallback"
    "&response_type=code&code_challenge_method=S256&code_challenge=" + "%ff" * 43,
])
def test_garbage_at_the_authorize_endpoint_gets_a_4xx_or_a_redirect(portal, http, clients,
                                                                     query):
    response = http.get(f"/oauth/authorize?{query}", headers=login(portal, "alice"))
    assert response.status_code in (302, 400), response.body
