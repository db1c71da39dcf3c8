"""Issue 14, Medium 3 and 7 and the login part of Low: attacks on logging in to the portal.

The portal runs on moto over a real socket (:class:`ControlPlane`), with a real OpenID Connect
provider on loopback (:mod:`tests.support.identity_provider`, ``uni`` keyed on e-mail, and a
GitHub-shaped ``github``); browsers are ``requests`` sessions, connecting from other loopback
addresses where the attack is about addresses, and a real Chromium for the portal's page.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

import pytest
import requests

from control_plane.bodies import NewUser
from tests.support.control_plane import ControlPlane, control_plane
from tests.support.identity_provider import IdentityProvider, identity_provider
from tests.support.portal_http import PortalBrowser

pytestmark = pytest.mark.timeout(120)

ADMIN_PASSWORD = "admin-password-1"
BOB_PASSWORD = "bob-password-1"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]

OPEN_REDIRECTS = [
    "/\t/evil.example", "/\n/evil.example", "/\r\n/evil.example", "\t//evil.example",
    " //evil.example", "//evil.example", "///evil.example", "/\\evil.example",
    "\\\\evil.example", "\\/evil.example", "https://evil.example/", "https:evil.example",
    "java\tscript:alert(1)", "javascript:alert(1)", "//evil.example@portal",
]
"""Targets a same-origin check that looks for a leading ``//`` lets through (or should not)."""


@dataclass
class World:
    plane: ControlPlane
    idp: IdentityProvider


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    with identity_provider() as idp, control_plane(settings={
            "DIT4C_LOGIN_PROVIDERS": idp.providers(username_claim="email")}) as plane:
        accounts = plane.services.accounts
        accounts.set_password("admin", ADMIN_PASSWORD, admin=True)
        accounts.create_user(NewUser(username="bob", password=BOB_PASSWORD))
        yield World(plane, idp)


def provider_login(world: World, provider: str, next_path: str = "/", *,
                   browser: PortalBrowser | None = None) -> tuple[requests.Response,
                                                                  PortalBrowser]:
    """The whole authorization-code flow in one browser; returns the callback's answer."""
    browser = browser or PortalBrowser(world.plane.url)
    start = browser.call("GET", f"/api/login/{provider}?" + urlencode({"next": next_path}))
    assert start.status_code == 302, start.text
    at_idp = requests.get(start.headers["Location"], allow_redirects=False, timeout=15)
    back = urlsplit(at_idp.headers["Location"])
    assert back.path == f"/api/login/{provider}/callback"
    return browser.call("GET", f"{back.path}?{back.query}"), browser


def me(browser: PortalBrowser) -> dict[str, Any]:
    answer = browser.call("GET", "/api/me")
    assert answer.status_code == 200, answer.text
    user: dict[str, Any] = answer.json()["user"]
    return user


def as_person(idp: IdentityProvider, *, email: str, sub: str | None = None,
              verified: bool | None = True) -> None:
    idp.subject = sub or uuid.uuid4().hex
    idp.email, idp.email_verified = email, verified


# --- Medium 3: open redirect after login --------------------------------------------------------


@pytest.mark.parametrize("target", OPEN_REDIRECTS)
def test_provider_login_never_returns_to_another_site(world: World, target: str):
    as_person(world.idp, email="carol@uni.example", sub="carol")
    done, _ = provider_login(world, "uni", target)
    assert done.status_code == 302, done.text
    assert done.headers["Location"] == "/"


def test_provider_login_returns_to_a_path_on_the_portal(world: World):
    as_person(world.idp, email="carol@uni.example", sub="carol")
    done, _ = provider_login(world, "uni", "/oauth/authorize?client_id=x&state=y")
    assert done.headers["Location"] == "/oauth/authorize?client_id=x&state=y"


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing (make deps installs Debian's chromium)")
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def _log_in_on_the_page(page: Any, url: str, username: str, password: str) -> None:
    page.goto(url)
    page.fill("#login-form input[name=username]", username)
    page.fill("#login-form input[name=password]", password)
    page.click("#login-form button[type=submit]")


def test_the_login_page_never_sends_the_browser_to_another_site(world: World, chromium: Any):
    """The page at ``/login?next=...`` (where the OAuth2 server sends anonymous browsers)
    follows ``next`` itself: each attack string, then a good path to show it would."""
    context = chromium.new_context()
    try:
        page = context.new_page()
        for target in OPEN_REDIRECTS:
            _log_in_on_the_page(page, f"{world.plane.url}/login?{urlencode({'next': target})}",
                                "bob", BOB_PASSWORD)
            page.wait_for_selector("#view-instances:not([hidden])", timeout=15_000)
            assert page.url.startswith(world.plane.url + "/"), (target, page.url)
            context.clear_cookies()
        # A path is followed; an encoded tab stays a path on the portal.
        for target in ("/api/me", "/%09/evil.example"):
            _log_in_on_the_page(page, f"{world.plane.url}/login?{urlencode({'next': target})}",
                                "bob", BOB_PASSWORD)
            page.wait_for_url(world.plane.url + target, timeout=15_000)
            context.clear_cookies()
    finally:
        context.close()


def test_a_planted_csrf_cookie_is_not_what_the_page_sends(world: World, chromium: Any):
    """A sibling host can set cookies for the portal's domain; the page must send the token
    the server gave it, whatever cookies say."""
    context = chromium.new_context()
    try:
        page = context.new_page()
        _log_in_on_the_page(page, world.plane.url + "/", "admin", ADMIN_PASSWORD)
        page.wait_for_selector("#view-instances:not([hidden])", timeout=15_000)
        page.evaluate("document.cookie = 'xcsrftoken=planted; path=/'")
        page.evaluate("document.cookie = 'csrf=planted; path=/'")
        sent = page.evaluate("""async () => {
            const answer = await api("POST", "/api/clusters", {name: "planted-cookie"});
            return answer.name; }""")
        assert sent == "planted-cookie"
    finally:
        context.close()


# --- Medium 7: external identities ------------------------------------------------------------


def test_colliding_names_are_different_accounts(world: World):
    """``alice+smith``, ``alice-smith`` and ``alice smith`` all sanitise to one username; long
    addresses collide once truncated. Each person gets an account of their own."""
    long = "a" * 70
    emails = ["alice+smith@uni.example", "alice-smith@uni.example", "alice smith@uni.example",
              f"{long}1@uni.example", f"{long}2@uni.example"]
    users = []
    for email in emails:
        as_person(world.idp, email=email)
        done, browser = provider_login(world, "uni")
        assert done.status_code == 302, done.text
        users.append(me(browser))
    assert len({u["username"] for u in users}) == len(emails)
    assert [u["display_name"] for u in users] == emails


def test_the_same_subject_is_the_same_account_whatever_its_email(world: World):
    as_person(world.idp, email="renamed@uni.example", sub="stable-subject")
    _, first = provider_login(world, "uni")
    as_person(world.idp, email="renamed-again@uni.example", sub="stable-subject")
    _, again = provider_login(world, "uni")
    assert me(first)["username"] == me(again)["username"]


def test_an_unverified_email_is_refused_where_email_is_the_claim(world: World):
    for verified in (False, None):
        as_person(world.idp, email="admin@uni.example", verified=verified)
        done, _ = provider_login(world, "uni")
        assert done.status_code == 401, done.text
        assert "verified" in done.json()["error"]["message"]


def test_a_reused_github_login_is_another_account(world: World):
    """GitHub frees a login when its owner renames; the next holder is someone else."""
    world.idp.subject, world.idp.github_id = "octocat", 1001
    _, first = provider_login(world, "github")
    world.idp.subject, world.idp.github_id = "octocat", 2002  # a new owner of the login
    _, second = provider_login(world, "github")
    world.idp.subject, world.idp.github_id = "octo-renamed", 1001  # the first, renamed
    _, renamed = provider_login(world, "github")
    assert me(first)["username"] != me(second)["username"]
    assert me(first)["username"] == me(renamed)["username"]
    assert me(renamed)["display_name"] == "octocat"  # as first seen; the key is the id


def test_an_account_from_before_is_bound_to_its_first_login_only(world: World):
    """An account made by the old rule (``<claim>@uni``, no subject kept) keeps working for
    the first login its claim maps to; after that it is that subject's alone."""
    users = world.plane.services.accounts.users
    users.put({"username": "dora.old@uni", "provider": "uni", "admin": False,
               "created_at": 0})
    as_person(world.idp, email="Dora.Old", sub="dora-subject")
    _, dora = provider_login(world, "uni")
    assert me(dora)["username"] == "dora.old@uni"
    as_person(world.idp, email="dora.old", sub="someone-else")
    _, other = provider_login(world, "uni")
    assert me(other)["username"] not in ("dora.old@uni",)


# --- Low: the account lockout anyone could hold -------------------------------------------------


def test_guessing_does_not_lock_the_owner_out_of_a_known_browser(world: World):
    plane = world.plane
    owner = PortalBrowser(plane.url)
    assert owner.login("bob", BOB_PASSWORD).status_code == 200  # the browser is known now
    assert owner.call("POST", "/api/logout").status_code == 204
    attacker = PortalBrowser(plane.url, source="127.0.0.3")
    limit = plane.config.login_failures_per_account
    for _ in range(limit):
        assert attacker.login("bob", "wrong-password").status_code == 401
    assert attacker.login("bob", BOB_PASSWORD).status_code == 429  # slowed down
    stranger = PortalBrowser(plane.url, source="127.0.0.4")
    assert stranger.login("bob", BOB_PASSWORD).status_code == 429  # unknown browsers wait
    assert owner.login("bob", BOB_PASSWORD).status_code == 200  # the owner's does not


def test_a_known_browser_is_slowed_down_on_its_own(world: World):
    plane = world.plane
    accounts = plane.services.accounts
    accounts.create_user(NewUser(username="erin", password="erin-password-1"))
    browser = PortalBrowser(plane.url, source="127.0.0.5")
    assert browser.login("erin", "erin-password-1").status_code == 200
    for _ in range(plane.config.login_failures_per_account):
        assert browser.login("erin", "wrong-password").status_code == 401
    assert browser.login("erin", "erin-password-1").status_code == 429
    # Its guesses did not touch the account: another browser logs in.
    assert PortalBrowser(plane.url, source="127.0.0.6").login(
        "erin", "erin-password-1").status_code == 200


def test_failures_from_one_address_do_not_lock_the_others(world: World):
    """Locally every caller used to be 127.0.0.1: twenty failures from a pod locked every
    login. The portal sees each peer's own address, as API Gateway gives the client's."""
    plane = world.plane
    pod = PortalBrowser(plane.url, source="127.0.0.2")
    for n in range(plane.config.login_failures_per_address):
        assert pod.login(f"nobody{n}", "wrong-password").status_code == 401
    assert pod.login("nobody", "wrong-password").status_code == 429
    assert PortalBrowser(plane.url).login("admin", ADMIN_PASSWORD).status_code == 200
