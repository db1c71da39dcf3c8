"""What a browser (and an attacker) does against instances behind auth helpers, tier-neutral.

Each scenario is an async function of a :class:`Stack`: a portal (:class:`PortalHarness`)
and instances ``a``, ``b`` (the busybox tool in the integration tier) and ``w`` (the echo tool,
which also speaks WebSocket and echoes the headers it got), each behind its own auth helper. The
functional tier runs the helpers as host processes (current aiohttp); the integration tier runs
them in the ``dit4c/helpers:dev`` container (Debian's aiohttp 3.8). Same scenarios, both tiers.

Access: ``alice`` owns a and w, ``sam`` has a shared with him, ``bob`` owns b. Access tokens
live ``TOKEN_LIFETIME`` seconds so that renewal and revocation happen within a test.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import aiohttp
import jwt
import pytest
from yarl import URL

from protocol import pod
from protocol.tokens import ALL_USERS, SigningKey, access_claims, revocation_claims
from tests.support.auth_harness import Browser, PortalHarness

TOKEN_LIFETIME = 6
PORTAL = "http://portal.dit4c.test"
DEFAULT_ACCESS = {"a": {"alice", "sam"}, "b": {"bob"}, "w": {"alice"}, "d": {"alice"}}

# What a tool tries, to set the helper's session cookie: well-formed, and malformed in ways
# that Python's SimpleCookie drops (so a filter built on it missed them) while browsers store
# them all the same; a nameless cookie comes back as its bare value, "dit4c-auth=...".
PLANTED_COOKIES = ["dit4c-auth=from-the-tool; Path=/", "dit4c-auth=from the tool; Path=/",
                   'dit4c-auth="from-the-tool; Path=/', "dit4c-auth=from\\the-tool",
                   " dit4c-auth =from-the-tool; Expires=Wed, 21 Oct 2099 07:28:00 GMT; x",
                   "=dit4c-auth=from-the-tool; Path=/", "dit4c-login=from-the-tool"]

# The echo tool: HTTP answers describe the request; /ws echoes; /set-cookie tries to set the
# helper's cookie. Runs as `python3 -c ECHO_TOOL HOST PORT` on aiohttp 3.8 and current alike,
# and prints "listening <port>" once it accepts connections.
ECHO_TOOL = r'''
import asyncio, hashlib, json, sys
from aiohttp import web

async def ws(request):
    sock = web.WebSocketResponse()
    await sock.prepare(request)
    await sock.send_str(json.dumps({"hello": True, "cookie": request.headers.get("Cookie")}))
    async for msg in sock:
        if msg.type == 1:
            await sock.send_str("echo: " + msg.data)
        elif msg.type == 2:
            await sock.send_bytes(msg.data[::-1])
    return sock

async def echo(request):
    PLANTED_COOKIES = %r
    if request.path == "/ws":
        return await ws(request)
    if request.path == "/set-cookie":
        response = web.Response(text="dit4c echo tool: cookies")
        for planted in PLANTED_COOKIES:
            response.headers.add("Set-Cookie", planted)
        response.headers.add("Set-Cookie", "tool=1; Path=/")
        return response
    body = await request.read()
    return web.json_response({"tool": "dit4c echo tool", "method": request.method,
                              "path_qs": request.raw_path, "headers": dict(request.headers),
                              "body_sha256": hashlib.sha256(body).hexdigest()})

async def main(host, port):
    app = web.Application(client_max_size=1024 ** 3)
    app.router.add_route("*", "/{tail:.*}", echo)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    print("listening", runner.addresses[0][1], flush=True)
    await asyncio.Event().wait()

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
''' % (PLANTED_COOKIES,)  # noqa: UP031 - the tool's own braces would fight format()


@dataclass
class Stack:
    """Where everything is: ``hosts`` maps public host names to the sockets behind them."""

    portal: PortalHarness
    hosts: dict[str, tuple[str, int]]
    markers: dict[str, str]
    """Text the tool behind each instance serves at ``/``."""
    revoke: Callable[[str], None] | None = None
    """Send the router a revocation for an instance (end to end only; instance ``d``)."""
    browsers: list[Browser] = field(default_factory=list)

    def url(self, instance: str, path: str = "/") -> str:
        return f"http://{instance}.dit4c.test{path}"

    def browser(self, username: str | None) -> Browser:
        made = Browser(self.hosts, username)
        self.browsers.append(made)
        return made

    async def back_channel(self, instance: str, username: str) -> bool:
        """The portal's back-channel revocation, sent to the instance's public address."""
        address, port = self.hosts[f"{instance}.dit4c.test"]
        return await asyncio.to_thread(
            self.portal.server.notify_revoked, instance, self.url(instance).rstrip("/"),
            username, via=f"http://{address}:{port}")

    def reset(self) -> None:
        self.portal.access = {k: set(v) for k, v in DEFAULT_ACCESS.items()}
        self.portal.server.tamper = None

    async def close_browsers(self) -> None:
        for made in self.browsers:
            await made.close()
        self.browsers.clear()


def helper_env(portal: PortalHarness, instance: str, *, listen: str, upstream: str,
               token_base: str) -> dict[str, str]:
    """The environment the node daemon would give the instance's auth helper."""
    public = f"http://{instance}.dit4c.test"
    client_id, secret = portal.server.register_client(instance, public + pod.CALLBACK_PATH)
    return {
        pod.ENV_AUTH_LISTEN: listen, pod.ENV_AUTH_UPSTREAM: upstream,
        pod.ENV_INSTANCE_ID: instance, pod.ENV_PUBLIC_URL: public,
        pod.ENV_OAUTH_CLIENT_ID: client_id, pod.ENV_OAUTH_CLIENT_SECRET: secret,
        pod.ENV_OAUTH_AUTHORIZE_URL: f"{PORTAL}/oauth/authorize",
        pod.ENV_OAUTH_TOKEN_URL: f"{token_base}/oauth/token",
        pod.ENV_OAUTH_JWKS_URL: f"{token_base}/.well-known/jwks.json",
    }


async def wait_until_answering(stack: Stack, within: float = 60) -> None:
    """Every instance's helper and tool answer (an anonymous GET gets the login redirect)."""
    deadline = time.monotonic() + within
    anonymous = Browser(stack.hosts, None)
    try:
        for instance in stack.markers:
            while True:
                try:
                    async with anonymous.session.get(stack.url(instance),
                                                     allow_redirects=False) as response:
                        if response.status == 302:
                            break
                except aiohttp.ClientError:
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError(f"helper of {instance} never answered")
                await asyncio.sleep(0.2)
    finally:
        await anonymous.close()


def _query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def _session_cookie(browser: Browser, instance: str) -> str | None:
    for cookie in browser.jar:
        if cookie.key == "dit4c-auth" and cookie["domain"] in ("", f"{instance}.dit4c.test"):
            return cookie.value
    return None


async def _status(browser: Browser, url: str, **headers: str) -> tuple[int, str]:
    async with browser.session.get(url, allow_redirects=False, headers=headers) as response:
        return response.status, response.headers.get("Location", "")


async def _login(stack: Stack, user: str, instance: str) -> Browser:
    browser = stack.browser(user)
    visit = await browser.get(stack.url(instance))
    assert visit.status == 200, visit
    return browser


# --- who gets in ------------------------------------------------------------------------------


async def owner_gets_the_tool(stack: Stack) -> None:
    browser = stack.browser("alice")
    callback = await browser.get(stack.url("a"), stop_at=stack.url("a", pod.CALLBACK_PATH))
    assert any(v.startswith(f"{PORTAL}/login") for v in callback.visited)
    async with browser.session.get(callback.url, allow_redirects=False) as response:
        assert response.status == 302 and response.headers["Location"] == "/"
        set_cookie = next(c for c in response.headers.getall("Set-Cookie")
                          if c.startswith("dit4c-auth="))
    # The session cookie: HttpOnly, SameSite=Lax, host-only (no Domain), not Secure on http.
    attributes = {a.strip().split("=")[0].lower() for a in set_cookie.split(";")[1:]}
    assert {"httponly", "samesite", "path"} <= attributes, set_cookie
    assert "samesite=lax" in set_cookie.lower().replace(" ", "")
    assert not attributes & {"domain", "secure"}, set_cookie
    visit = await browser.get(stack.url("a"))
    assert visit.status == 200 and stack.markers["a"] in visit.text, visit
    # Logged in: the next page load goes straight to the tool.
    assert (await _status(browser, stack.url("a")))[0] == 200


async def shared_user_gets_the_tool(stack: Stack) -> None:
    visit = await stack.browser("sam").get(stack.url("a"))
    assert visit.status == 200 and stack.markers["a"] in visit.text, visit


async def other_user_gets_403(stack: Stack) -> None:
    visit = await stack.browser("bob").get(stack.url("a"))
    assert visit.status == 403, visit
    assert "Access denied" in visit.text
    assert _session_cookie(stack.browsers[-1], "a") is None


async def anonymous_is_sent_to_login_and_back_to_the_deep_link(stack: Stack) -> None:
    deep = stack.url("a", "/index.html?tab=2&x=%2Fy")
    # Someone who never logs in stays at the portal's login page.
    visit = await stack.browser(None).get(deep)
    assert visit.status == 200 and urlsplit(visit.url).path == "/login", visit
    # Someone who logs in there lands on the page first asked for, served by the tool.
    visit = await stack.browser("alice").get(deep)
    assert URL(visit.url) == URL(deep) and visit.status == 200, visit
    assert any(urlsplit(v).path == "/login" for v in visit.visited)


async def session_renews_before_the_token_expires(stack: Stack) -> None:
    browser = await _login(stack, "alice", "a")
    await asyncio.sleep(TOKEN_LIFETIME + 1)
    # Renewed with the refresh token behind the scenes: no trip through the portal.
    assert (await _status(browser, stack.url("a")))[0] == 200


async def revoked_share_ends_access_within_the_token_lifetime(stack: Stack) -> None:
    browser = await _login(stack, "sam", "a")
    stack.portal.access["a"].discard("sam")
    await asyncio.sleep(TOKEN_LIFETIME + 1)
    status, location = await _status(browser, stack.url("a"))
    assert status == 302 and location.startswith(f"{PORTAL}/oauth/authorize"), location
    assert (await browser.get(stack.url("a"))).status == 403


async def revoked_share_ends_at_once_through_the_back_channel(stack: Stack) -> None:
    sam = await _login(stack, "sam", "a")
    alice = await _login(stack, "alice", "a")
    stack.portal.access["a"].discard("sam")
    assert await stack.back_channel("a", "sam")
    # No waiting for the token to expire: sam is out now, and the portal refuses him again.
    status, location = await _status(sam, stack.url("a"))
    assert status == 302 and location.startswith(f"{PORTAL}/oauth/authorize"), location
    assert (await sam.get(stack.url("a"))).status == 403
    assert (await _status(alice, stack.url("a")))[0] == 200  # others keep their sessions


async def back_channel_revocation_closes_open_websockets_at_once(stack: Stack) -> None:
    browser = await _login(stack, "alice", "w")
    async with browser.session.ws_connect(stack.url("w", "/ws")) as ws:
        await ws.receive(timeout=10)
        assert await stack.back_channel("w", ALL_USERS)
        message = await ws.receive(timeout=5)
        assert message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), message
        assert ws.close_code == aiohttp.WSCloseCode.POLICY_VIOLATION, (ws.close_code, message)


async def back_channel_refuses_what_the_portal_did_not_sign(stack: Stack) -> None:
    browser = await _login(stack, "alice", "a")
    signer, other = stack.portal.signer, SigningKey.generate()
    revoke_alice = revocation_claims(issuer=PORTAL, instance_id="a", username="alice")
    forged = {
        "another key": other.sign(revoke_alice),
        "another key under the portal's kid": jwt.encode(
            revoke_alice, other.private_key, algorithm="ES256", headers={"kid": signer.kid}),
        "an access token": signer.sign(access_claims(
            issuer=PORTAL, instance_id="a", username="alice", client_id="instance-a")),
        "for another instance": signer.sign(revocation_claims(
            issuer=PORTAL, instance_id="b", username="alice")),
        "expired": signer.sign(revocation_claims(issuer=PORTAL, instance_id="a",
                                                 username="alice", now=time.time() - 1000)),
        "from another issuer": signer.sign(revocation_claims(
            issuer="https://evil.example", instance_id="a", username="alice")),
        "garbage": "not-a-token",
    }
    url = stack.url("a", pod.REVOKE_PATH)
    for name, token in forged.items():
        async with browser.session.post(url, headers={"Authorization": f"Bearer {token}"}
                                        ) as response:
            assert response.status == 403, name
    async with browser.session.get(url) as response:
        assert response.status == 405
    assert (await _status(browser, stack.url("a")))[0] == 200  # alice is still in


async def back_channel_revocations_work_once(stack: Stack) -> None:
    """A captured revocation, sent again while it is still valid, ends nobody's sessions."""
    first = await _login(stack, "alice", "a")
    token = stack.portal.signer.sign(revocation_claims(issuer=PORTAL, instance_id="a",
                                                       username="alice"))
    url = stack.url("a", pod.REVOKE_PATH)
    async with first.session.post(url, headers={"Authorization": f"Bearer {token}"}) as sent:
        assert sent.status == 200 and (await sent.json())["ended"] >= 1
    again = await _login(stack, "alice", "a")
    async with again.session.post(url, headers={"Authorization": f"Bearer {token}"}) as sent:
        assert sent.status == 403 and "already used" in (await sent.json())["error"]
    assert (await _status(again, stack.url("a")))[0] == 200


async def logout_ends_the_session(stack: Stack) -> None:
    browser = await _login(stack, "alice", "a")
    old = _session_cookie(browser, "a")
    logout = stack.url("a", pod.LOGOUT_PATH)
    # A GET only shows the button; a POST from another origin (another instance's page,
    # same-site, so the Lax cookie comes along) or with none is refused.
    visit = await browser.get(logout, max_hops=1)
    assert visit.status == 200 and "method='post'" in visit.text
    for origin in ({"Origin": stack.url("b").rstrip("/")}, {"Origin": "null"}, {}):
        async with browser.session.post(logout, headers=origin,
                                        allow_redirects=False) as refused:
            assert refused.status == 403, origin
    assert (await _status(browser, stack.url("a")))[0] == 200
    async with browser.session.post(logout, headers={"Origin": stack.url("a").rstrip("/")},
                                    allow_redirects=False) as done:
        assert done.status == 200 and "Signed out" in await done.text()
    assert _session_cookie(browser, "a") in (None, "")
    status, location = await _status(browser, stack.url("a"))
    assert status == 302 and location.startswith(f"{PORTAL}/oauth/authorize")
    # The old cookie value is dead, not just forgotten by the browser.
    stranger = stack.browser(None)
    assert (await _status(stranger, stack.url("a"), Cookie=f"dit4c-auth={old}"))[0] == 302


# --- what reaches the tool --------------------------------------------------------------------


async def helper_cookies_never_reach_the_tool(stack: Stack) -> None:
    browser = await _login(stack, "alice", "w")
    browser.jar.update_cookies({"tool-pref": "dark"}, response_url=URL(
        stack.url("w")))
    visit = await browser.get(stack.url("w", "/headers?q=1"))
    seen = json.loads(visit.text)
    assert seen["path_qs"] == "/headers?q=1"
    assert "tool-pref=dark" in seen["headers"]["Cookie"]
    assert "dit4c-auth" not in seen["headers"]["Cookie"]
    assert "dit4c-login" not in seen["headers"]["Cookie"]
    assert seen["headers"]["Host"] == "w.dit4c.test"
    # And the tool cannot set (or fixate) the helper's cookie.
    async with browser.session.get(stack.url("w", "/set-cookie")) as response:
        set_cookies = response.headers.getall("Set-Cookie", [])
    assert any(c.startswith("tool=1") for c in set_cookies)
    assert len(set_cookies) == 1, set_cookies  # every planted one dropped


async def request_bodies_stream_both_ways(stack: Stack) -> None:
    browser = await _login(stack, "alice", "w")
    payload = bytes(range(256)) * 40000  # 10 MB

    async def chunks() -> Any:
        for i in range(0, len(payload), 1 << 20):
            yield payload[i:i + (1 << 20)]

    async with browser.session.post(stack.url("w", "/upload"), data=chunks()) as response:
        assert response.status == 200
        seen = await response.json()
    assert seen["method"] == "POST"
    assert seen["body_sha256"] == hashlib.sha256(payload).hexdigest()


async def websocket_through_the_helper(stack: Stack) -> None:
    browser = await _login(stack, "alice", "w")
    async with browser.session.ws_connect(stack.url("w", "/ws")) as ws:
        hello = json.loads((await ws.receive(timeout=10)).data)
        assert hello["hello"] and "dit4c-auth" not in (hello["cookie"] or "")
        await ws.send_str("hi")
        assert (await ws.receive(timeout=10)).data == "echo: hi"
        await ws.send_bytes(b"\x01\x02\x03")
        assert (await ws.receive(timeout=10)).data == b"\x03\x02\x01"
    # Without a session the upgrade is refused.
    with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
        async with stack.browser(None).session.ws_connect(stack.url("w", "/ws")):
            pass
    assert caught.value.status == 401


async def revoked_access_closes_open_websockets(stack: Stack) -> None:
    browser = await _login(stack, "alice", "w")
    async with browser.session.ws_connect(stack.url("w", "/ws")) as ws:
        await ws.receive(timeout=10)
        stack.portal.access["w"].discard("alice")
        message = await ws.receive(timeout=TOKEN_LIFETIME + 10)
        assert message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), message
        assert ws.close_code == aiohttp.WSCloseCode.POLICY_VIOLATION


# --- attacks ----------------------------------------------------------------------------------


async def tampered_redirect_uri_is_refused(stack: Stack) -> None:
    browser = stack.browser("alice")
    start = await browser.get(stack.url("a"), stop_at=f"{PORTAL}/oauth/authorize")
    params = _query(start.url)
    for evil in ("http://evil.test/.dit4c/auth/callback",
                 "http://b.dit4c.test" + pod.CALLBACK_PATH,
                 stack.url("a", pod.CALLBACK_PATH + "/../x")):
        tampered = f"{PORTAL}/oauth/authorize?" + urlencode({**params, "redirect_uri": evil})
        visit = await browser.get(tampered)
        assert visit.status == 400 and urlsplit(visit.url).netloc == "portal.dit4c.test", visit
        assert not any("code=" in v for v in visit.visited)


async def replayed_code_is_refused(stack: Stack) -> None:
    browser = stack.browser("alice")
    callback = stack.url("a", pod.CALLBACK_PATH)
    stopped = await browser.get(stack.url("a"), stop_at=callback)
    assert "code=" in stopped.url
    assert (await browser.get(stopped.url)).status == 200  # the real sign-in
    # The same callback again, from the same browser or another one: refused.
    assert (await browser.get(stopped.url, max_hops=1)).status == 400
    thief = stack.browser(None)
    assert (await thief.get(stopped.url, max_hops=1)).status == 400
    # The code in a fresh login of the thief's own: the portal refuses the second redemption.
    own = await thief.get(stack.url("a"), stop_at=f"{PORTAL}/oauth/authorize")
    injected = _with(callback, code=_query(stopped.url)["code"], state=_query(own.url)["state"])
    visit = await thief.get(injected, max_hops=1)
    assert visit.status == 403 and "invalid_grant" in visit.text, visit
    assert _session_cookie(thief, "a") is None


async def code_issued_for_another_instance_is_refused(stack: Stack) -> None:
    stack.portal.access["b"].add("alice")
    victim = stack.browser("alice")
    stolen = await victim.get(stack.url("a"), stop_at=stack.url("a", pod.CALLBACK_PATH))
    attacker = stack.browser("alice")  # even the same user cannot move a code between instances
    own = await attacker.get(stack.url("b"), stop_at=f"{PORTAL}/oauth/authorize")
    injected = _with(stack.url("b", pod.CALLBACK_PATH), code=_query(stolen.url)["code"],
                     state=_query(own.url)["state"])
    visit = await attacker.get(injected, max_hops=1)
    assert visit.status == 403 and "invalid_grant" in visit.text, visit
    assert (await _status(attacker, stack.url("b")))[0] == 302


async def code_without_the_right_pkce_verifier_is_refused(stack: Stack) -> None:
    victim = stack.browser("alice")
    callback = stack.url("a", pod.CALLBACK_PATH)
    stolen = await victim.get(stack.url("a"), stop_at=callback)
    attacker = stack.browser(None)
    own = await attacker.get(stack.url("a"), stop_at=f"{PORTAL}/oauth/authorize")
    # The attacker's login has its own PKCE verifier, which does not match the stolen code.
    injected = _with(callback, code=_query(stolen.url)["code"], state=_query(own.url)["state"])
    visit = await attacker.get(injected, max_hops=1)
    assert visit.status == 403 and "code_verifier" in visit.text, visit
    assert (await _status(attacker, stack.url("a")))[0] == 302
    # The wrong guess spent the code: the victim's own callback now fails too.
    assert (await victim.get(stolen.url, max_hops=1)).status == 403


async def callback_with_a_state_from_another_browser_is_refused(stack: Stack) -> None:
    # Login CSRF: the attacker's code+state delivered to the victim's browser.
    attacker = stack.browser("bob")
    stack.portal.access["a"].add("bob")
    stolen = await attacker.get(stack.url("a"), stop_at=stack.url("a", pod.CALLBACK_PATH))
    victim = stack.browser(None)
    visit = await victim.get(stolen.url, max_hops=1)
    assert visit.status == 400, visit
    assert _session_cookie(victim, "a") is None


UNSAFE_METHODS = ("POST", "PUT", "PATCH", "DELETE")
FOREIGN_ORIGINS = ("http://a.dit4c.test", "null", "http://w.dit4c.test.evil.example",
                   "https://w.dit4c.test")


async def requests_from_another_origin_are_refused(stack: Stack) -> None:
    # A page of instance a (same-site: the Lax cookie goes along) at alice's own instance w.
    browser = await _login(stack, "alice", "w")
    own = stack.url("w").rstrip("/")

    async def send(method: str, **headers: str) -> int:
        async with browser.session.request(method, stack.url("w", "/api/contents"),
                                           data=b"{}", headers=headers,
                                           allow_redirects=False) as response:
            return response.status

    for method in UNSAFE_METHODS:
        for origin in FOREIGN_ORIGINS:
            assert await send(method, Origin=origin) == 403, (method, origin)
        # No Origin but the browser's own word that another site sent it.
        assert await send(method, **{"Sec-Fetch-Site": "same-site"}) == 403, method
        assert await send(method, Origin=own) == 200, method
        assert await send(method, Origin=own.upper()) == 200, method
        # No Origin at all: no browser sent it (they always do for these methods), so a
        # program holding the user's own cookie; there is no one to forge it for.
        assert await send(method) == 200, method
        assert await send(method, **{"Sec-Fetch-Site": "same-origin"}) == 200, method
    # Safe methods are left alone (Lax sends the cookie on a navigation from anywhere).
    assert await send("GET", Origin="http://a.dit4c.test") == 200
    for origin in FOREIGN_ORIGINS:
        with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
            async with browser.session.ws_connect(stack.url("w", "/ws"), origin=origin):
                pass
        assert caught.value.status == 403, origin
    allowed: tuple[str | None, ...] = (own, None)
    for allowed_origin in allowed:
        async with browser.session.ws_connect(stack.url("w", "/ws"),
                                              origin=allowed_origin) as ws:
            assert json.loads((await ws.receive(timeout=10)).data)["hello"]


async def flooded_sign_in_starts_push_out_no_one(stack: Stack) -> None:
    victim = stack.browser("alice")
    started = await victim.get(stack.url("w", "/deep?x=1"), stop_at=f"{PORTAL}/oauth/authorize")
    flooder = stack.browser(None)

    async def flood(count: int) -> None:
        for _ in range(count):
            async with flooder.session.get(stack.url("w", "/"), allow_redirects=False,
                                           headers={"Cookie": "dit4c-login=flood"}) as r:
                assert r.status == 302

    await asyncio.gather(*(flood(300) for _ in range(5)))  # 1,500: the old store kept 1,000
    visit = await victim.get(started.url)
    assert visit.status == 200 and json.loads(visit.text)["path_qs"] == "/deep?x=1", visit


def _forge(claims: dict[str, Any], kid: str) -> dict[str, str]:
    """Tokens a hostile or broken portal could send instead of the real one."""
    other = SigningKey.generate()

    def b64(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    return {
        "signed by another key under the portal's kid": jwt.encode(
            claims, other.private_key, algorithm="ES256", headers={"kid": kid}),
        "alg none": f"{b64({'alg': 'none', 'typ': 'JWT', 'kid': kid})}.{b64(claims)}.",
        "HS256 keyed with junk": jwt.encode(claims, "k" * 32, algorithm="HS256",
                                            headers={"kid": kid}),
        "unknown kid": other.sign(claims),
    }


async def forged_tokens_are_refused(stack: Stack) -> None:
    portal = stack.portal
    claims = access_claims(issuer=PORTAL, instance_id="a", username="alice",
                           client_id="instance-a", lifetime=TOKEN_LIFETIME)
    cases = {
        **_forge(claims, portal.signer.kid),
        "expired": portal.signer.sign(access_claims(
            issuer=PORTAL, instance_id="a", username="alice", client_id="instance-a",
            now=time.time() - 1000)),
        "for another instance": portal.signer.sign(access_claims(
            issuer=PORTAL, instance_id="b", username="alice", client_id="instance-b")),
        "lives too long": portal.signer.sign({**claims, "exp": claims["iat"] + 86400}),
        "without a user": portal.signer.sign({k: v for k, v in claims.items() if k != "sub"}),
    }
    for name, forged in cases.items():
        portal.server.tamper = lambda body, forged=forged: {**body, "access_token": forged}
        browser = stack.browser("alice")
        visit = await browser.get(stack.url("a"))
        assert visit.status == 403 and "invalid access token" in visit.text, (name, visit)
        assert _session_cookie(browser, "a") is None, name


async def cookie_of_instance_a_is_useless_on_b(stack: Stack) -> None:
    stack.portal.access["b"].add("alice")
    browser = await _login(stack, "alice", "a")
    value = _session_cookie(browser, "a")
    assert value
    other = stack.browser(None)
    status, location = await _status(other, stack.url("b"), Cookie=f"dit4c-auth={value}")
    assert status == 302 and location.startswith(f"{PORTAL}/oauth/authorize")
    # Host-only: the browser itself never sends a's cookie to b.
    assert not browser.jar.filter_cookies(URL(stack.url("b")))


async def discarded_instance_is_cut_off_at_once_by_the_router(stack: Stack) -> None:
    if stack.revoke is None:
        pytest.skip("needs the edge router (end-to-end path)")
    browser = await _login(stack, "alice", "d")
    stack.revoke("d")
    # The auth session is still valid; the router's revocation alone must end access, and
    # within seconds (it long-polls its queue), not at the token's expiry.
    deadline = time.monotonic() + 15
    while (status := (await _status(browser, stack.url("d")))[0]) == 200:
        assert time.monotonic() < deadline, "the route still answers after the revocation"
        await asyncio.sleep(0.2)
    assert status in (404, 410, 502, 503), status
    await asyncio.sleep(2)  # the listener redials with its (now revoked) token: still refused
    assert (await _status(browser, stack.url("d")))[0] != 200


async def garbage_gets_a_clear_refusal_never_a_crash(stack: Stack) -> None:
    anonymous = stack.browser(None)
    callback = stack.url("a", pod.CALLBACK_PATH)
    cases: list[tuple[str, str, dict[str, str], int]] = [
        ("GET", callback, {}, 400),
        ("GET", callback + "?state=&code=", {}, 400),
        ("GET", callback + "?state=%ff%fe&code=%00", {"Cookie": "dit4c-login=x"}, 400),
        ("GET", callback + "?error=access_denied&state=nope", {}, 400),
        ("GET", stack.url("a"), {"Cookie": "dit4c-auth=\"; ;=;;dit4c-auth"}, 302),
        ("GET", stack.url("a"), {"Cookie": "dit4c-auth=" + "x" * 4000}, 302),
        ("POST", stack.url("a", pod.REVOKE_PATH), {"Authorization": "Bearer " + "x" * 4000},
         403),
        ("POST", stack.url("a", "/anything"), {}, 401),
        ("GET", stack.url("a", pod.LOGOUT_PATH), {"Cookie": "dit4c-auth=unknown"}, 200),
    ]
    for method, url, headers, expected in cases:
        async with anonymous.session.request(method, url, headers=headers,
                                             allow_redirects=False) as response:
            assert response.status == expected, (method, url, headers, response.status)
    async with anonymous.session.post(stack.url("a", pod.REVOKE_PATH),
                                      data=b"token=" + b"x" * 100_000,
                                      headers={"Content-Type":
                                               "application/x-www-form-urlencoded"}
                                      ) as response:
        assert response.status == 403


def _with(url: str, **params: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(query=urlencode(params)))


Scenario = Callable[[Stack], Awaitable[None]]
SCENARIOS: list[Scenario] = [
    owner_gets_the_tool, shared_user_gets_the_tool, other_user_gets_403,
    anonymous_is_sent_to_login_and_back_to_the_deep_link,
    session_renews_before_the_token_expires,
    revoked_share_ends_access_within_the_token_lifetime,
    revoked_share_ends_at_once_through_the_back_channel,
    back_channel_revocation_closes_open_websockets_at_once,
    back_channel_refuses_what_the_portal_did_not_sign, back_channel_revocations_work_once,
    logout_ends_the_session,
    helper_cookies_never_reach_the_tool, request_bodies_stream_both_ways,
    websocket_through_the_helper, revoked_access_closes_open_websockets,
    tampered_redirect_uri_is_refused, replayed_code_is_refused,
    code_issued_for_another_instance_is_refused,
    code_without_the_right_pkce_verifier_is_refused,
    callback_with_a_state_from_another_browser_is_refused, forged_tokens_are_refused,
    cookie_of_instance_a_is_useless_on_b, garbage_gets_a_clear_refusal_never_a_crash,
    requests_from_another_origin_are_refused, flooded_sign_in_starts_push_out_no_one,
    discarded_instance_is_cut_off_at_once_by_the_router,
]
