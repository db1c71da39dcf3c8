"""Issue 14, Low: the portal's cookies under https.

Instances live under a domain that may be the portal's parent (``<id>.apps.example`` beside
``portal.apps.example``); a page there can set cookies for the parent domain. Under https the
portal's cookies carry the ``__Host-`` prefix, which browsers accept only from the portal's own
host (Secure, ``Path=/``, no ``Domain``), and the portal reads no other: a session cookie planted
under the plain name counts for nothing.

The portal is configured as ``https://...`` but served over plain HTTP on loopback, so the
cookies are sent by hand (a browser would keep Secure cookies off plain HTTP).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests

from tests.support.control_plane import ControlPlane, control_plane

pytestmark = pytest.mark.timeout(60)

PASSWORD = "admin-password-1"


@pytest.fixture(scope="module")
def plane() -> Iterator[ControlPlane]:
    with control_plane(settings={"DIT4C_PORTAL_URL": "https://portal.apps.example"}) as made:
        made.services.accounts.set_password("admin", PASSWORD, admin=True)
        yield made


def test_under_https_the_portals_cookies_are_host_only(plane: ControlPlane):
    answer = requests.post(plane.url + "/api/login", json={"username": "admin",
                                                           "password": PASSWORD}, timeout=15)
    assert answer.status_code == 200
    cookies = answer.raw.headers.getlist("Set-Cookie")
    names = sorted(c.split("=", 1)[0] for c in cookies)
    assert names == ["__Host-dit4c_device", "__Host-dit4c_session"]
    for cookie in cookies:
        attributes = [a.strip() for a in cookie.split(";")[1:]]
        assert {"Secure", "HttpOnly", "Path=/"} <= set(attributes), cookie
        assert not any(a.lower().startswith("domain") for a in attributes), cookie


def test_a_session_cookie_planted_without_the_prefix_counts_for_nothing(plane: ControlPlane):
    answer = requests.post(plane.url + "/api/login", json={"username": "admin",
                                                           "password": PASSWORD}, timeout=15)
    session = next(c for c in answer.raw.headers.getlist("Set-Cookie")
                   if c.startswith("__Host-dit4c_session="))
    token = session.split(";", 1)[0].split("=", 1)[1]
    planted = requests.get(plane.url + "/api/me", headers={"Cookie": f"dit4c_session={token}"},
                           timeout=15)
    assert planted.status_code == 401
    own = requests.get(plane.url + "/api/me",
                       headers={"Cookie": f"__Host-dit4c_session={token}"}, timeout=15)
    assert own.status_code == 200
