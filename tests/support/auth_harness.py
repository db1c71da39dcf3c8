"""A small portal for the auth tests: the real OAuth2 server and routes, a fake login.

``PortalHarness`` runs :class:`control_plane.oauth.OAuthServer` over moto's DynamoDB (tables made
from ``template.yaml``) behind the real ``oauth_blueprint``, in a tiny Chalice app that adds
what the control plane will provide for real: a login page (``/login``, a form; POST sets the
``portal_session`` cookie and goes to ``next``), the JWKS (``/.well-known/jwks.json``) and who
may use which instance (``access``). ``serve(host)`` runs it on a real socket in a thread
(Chalice's local server), for the auth helper to reach over HTTP; ``client()`` is Chalice's
test client. The caller holds ``mock_aws`` active for the harness's lifetime.

Also here, because two tiers use it: ``Browser``, an aiohttp client with a cookie jar and a
resolver for made-up host names, which follows redirects like a browser and fills in the login
form when the portal asks.
"""

from __future__ import annotations

import contextlib
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import boto3
import yaml
from aiohttp.abc import AbstractResolver, ResolveResult
from chalice.app import Chalice, Request, Response
from chalice.config import Config
from chalice.local import LocalDevServer
from yarl import URL

from control_plane.oauth import OAuthServer
from control_plane.oauth_routes import oauth_blueprint
from control_plane.table import Table
from protocol.tokens import ACCESS_TOKEN_MAX_LIFETIME, SigningKey

TEMPLATE = Path(__file__).resolve().parents[2] / "template.yaml"
SESSION_COOKIE = "portal_session"


class _CfnLoader(yaml.SafeLoader):
    """Reads template.yaml: CloudFormation's short tags (!Ref, !Sub...) become plain values."""


_CfnLoader.add_multi_constructor("!", lambda loader, suffix, node: None)


def create_tables(dynamodb: Any, *logical_ids: str) -> dict[str, Table]:
    """Create tables as template.yaml defines them (keys, indexes) with a DynamoDB client."""
    resources = yaml.load(TEMPLATE.read_text(), Loader=_CfnLoader)["Resources"]  # noqa: S506
    tables = {}
    for logical_id in logical_ids:
        props = resources[logical_id]["Properties"]
        kwargs: dict[str, Any] = {
            "TableName": f"{logical_id}-{secrets.token_hex(4)}",
            "KeySchema": props["KeySchema"],
            "AttributeDefinitions": props["AttributeDefinitions"],
            "BillingMode": "PAY_PER_REQUEST",
        }
        if "GlobalSecondaryIndexes" in props:
            kwargs["GlobalSecondaryIndexes"] = props["GlobalSecondaryIndexes"]
        dynamodb.create_table(**kwargs)
        tables[logical_id] = Table(dynamodb, kwargs["TableName"])
    return tables


class TamperingOAuthServer(OAuthServer):
    """The real server, whose token responses a test may rewrite to play a hostile portal."""

    tamper: Callable[[dict[str, Any]], dict[str, Any]] | None = None

    def token(self, form: Mapping[str, str], authorization: str | None = None) -> dict[str, Any]:
        body = super().token(form, authorization)
        return self.tamper(body) if self.tamper is not None else body


class PortalHarness:
    """The OAuth server under test with a fake portal around it (see the module docstring)."""

    def __init__(self, *, issuer: str = "http://portal.test",
                 access_lifetime: int = ACCESS_TOKEN_MAX_LIFETIME,
                 tables: tuple[Table, Table] | None = None) -> None:
        """``tables``: the OAuth clients and tokens tables to use (default: new ones)."""
        if tables is None:
            dynamodb = boto3.client("dynamodb", region_name="us-east-1")
            made = create_tables(dynamodb, "OAuthClientsTable", "TokensTable")
            tables = made["OAuthClientsTable"], made["TokensTable"]
        self.clients_table, self.tokens_table = tables
        self.issuer = issuer
        self.signer = SigningKey.generate()
        self.access: dict[str, set[str]] = {}
        self.sessions: dict[str, str] = {}
        self.now_offset = 0.0
        self.server = TamperingOAuthServer(
            clients=self.clients_table, tokens=self.tokens_table, signer=self.signer,
            issuer=issuer, can_access=self.can_access, clock=self.clock,
            access_lifetime=access_lifetime,
        )
        self.app = self._make_app()

    def clock(self) -> float:
        return time.time() + self.now_offset

    def can_access(self, username: str, instance_id: str) -> bool:
        return username in self.access.get(instance_id, set())

    def jwks(self) -> dict[str, Any]:
        return {"keys": [self.signer.public_jwk()]}

    def session_username(self, request: Request) -> str | None:
        cookies = (request.headers.get("cookie") or "").split(";")
        for cookie in cookies:
            name, _, value = cookie.strip().partition("=")
            if name == SESSION_COOKIE:
                return self.sessions.get(value)
        return None

    def _make_app(self) -> Chalice:
        app = Chalice(app_name="auth-test-portal")
        app.register_blueprint(oauth_blueprint(get_server=lambda: self.server,
                                               session_username=self.session_username))

        @app.route("/login", methods=["GET"])
        def login_page() -> Response:
            request = app.current_request
            assert request is not None
            nxt = request.query_params.get("next", "/") if request.query_params else "/"
            form = (f"<form method='post' action='/login'><input name='next' value='{nxt}'>"
                    "<input name='username'><button>Log in</button></form>")
            return Response(form, headers={"Content-Type": "text/html"})

        @app.route("/login", methods=["POST"],
                   content_types=["application/x-www-form-urlencoded"])
        def login() -> Response:
            request = app.current_request
            assert request is not None
            raw = request.raw_body
            text = raw if isinstance(raw, str) else raw.decode()
            form = {k: v[0] for k, v in parse_qs(text).items()}
            sid = secrets.token_urlsafe(16)
            self.sessions[sid] = form["username"]
            nxt = form.get("next", "/")
            if not nxt.startswith("/") or nxt.startswith("//"):
                nxt = "/"
            return Response("", status_code=303, headers={
                "Location": nxt, "Set-Cookie": f"{SESSION_COOKIE}={sid}; Path=/; HttpOnly"})

        @app.route("/.well-known/jwks.json")
        def jwks() -> dict[str, Any]:
            return self.jwks()

        return app

    @contextlib.contextmanager
    def serve(self, host: str) -> Iterator[str]:
        """Serve the portal on ``host`` (port 0) in a thread; yields its base URL."""
        dev = LocalDevServer(self.app, Config(), host, 0)
        port = dev.server.server_address[1]
        thread = threading.Thread(target=dev.server.serve_forever, daemon=True,
                                  name="auth-test-portal")
        thread.start()
        try:
            yield f"http://{host}:{port}"
        finally:
            dev.shutdown()
            dev.server.server_close()
            thread.join(timeout=10)


class StaticResolver(AbstractResolver):
    """Resolves the tests' made-up host names (``a.dit4c.test``) to a socket address each.

    The port comes from the mapping, not the URL: public URLs carry no port, as behind the
    router, while the test servers listen wherever port 0 put them.
    """

    def __init__(self, hosts: dict[str, tuple[str, int]]) -> None:
        self.hosts = hosts

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        address, real_port = self.hosts.get(host, (host, port))
        return [{"hostname": host, "host": address, "port": real_port,
                 "family": socket.AF_INET, "proto": 0, "flags": socket.AI_NUMERICHOST}]

    async def close(self) -> None:
        return None


class Browser:
    """A cookie-jar HTTP client that follows redirects and logs in as ``username`` when asked.

    ``get(url)`` returns the final response's status, URL and text, and the list of URLs
    visited; ``username=None`` is an anonymous visitor who never logs in. At the test portal's
    ``/login`` it submits the form; with a ``password`` it does what the real portal's page does
    instead: ``POST /api/login`` (JSON), then goes to ``next``.
    """

    def __init__(self, hosts: dict[str, tuple[str, int]], username: str | None,
                 password: str | None = None) -> None:
        self.username = username
        self.password = password
        self.jar = aiohttp.CookieJar(unsafe=True)
        self.session = aiohttp.ClientSession(
            cookie_jar=self.jar,
            connector=aiohttp.TCPConnector(resolver=StaticResolver(hosts), force_close=True),
            timeout=aiohttp.ClientTimeout(total=20),
        )

    async def close(self) -> None:
        await self.session.close()

    async def get(self, url: str, *, max_hops: int = 10, stop_at: str | None = None,
                  headers: dict[str, str] | None = None) -> Visit:
        """Follow redirects (and the login form); ``stop_at``: return the first redirect whose
        target starts with it, without following it (to capture codes and states)."""
        visited = [url]
        method: str = "GET"
        data: dict[str, str] | None = None
        for _ in range(max_hops):
            async with self.session.request(
                method, url, data=data, allow_redirects=False,
                headers={"Accept": "text/html", **(headers or {})},
            ) as response:
                text = await response.text()
                status, location = response.status, response.headers.get("Location")
            if status in (301, 302, 303, 307, 308) and location:
                target = str(URL(url).join(URL(location)))
                if stop_at is not None and target.startswith(stop_at):
                    return Visit(status, target, text, visited)
                url = target
                visited.append(url)
                method, data = "GET", None
                continue
            if urlsplit(url).path == "/login" and status == 200 and self.username is not None:
                nxt = parse_qs(urlsplit(url).query).get("next", ["/"])[0]
                if self.password is not None:
                    await self._api_login(url)
                    url = str(URL(url).join(URL(nxt)))
                    visited.append(url)
                    method, data = "GET", None
                    continue
                method, data = "POST", {"username": self.username, "next": nxt}
                url = str(URL(url).with_query(None))
                visited.append(url)
                continue
            return Visit(status, url, text, visited)
        raise AssertionError(f"too many redirects: {visited}")


    async def _api_login(self, page: str) -> None:
        api = str(URL(page).join(URL("/api/login")))
        async with self.session.post(api, json={"username": self.username,
                                                "password": self.password}) as response:
            if response.status != 200:
                raise AssertionError(f"login as {self.username}: {response.status} "
                                     f"{await response.text()}")


class Visit:
    def __init__(self, status: int, url: str, text: str, visited: list[str]) -> None:
        self.status, self.url, self.text, self.visited = status, url, text, visited

    def __repr__(self) -> str:
        return f"Visit({self.status}, {self.url}, {self.text[:80]!r}, via {self.visited})"
