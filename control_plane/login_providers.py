"""Logging in through an identity provider: generic OIDC and GitHub (authorization code flow).

Configured by ``DIT4C_LOGIN_PROVIDERS``, a JSON list; each entry::

    {"name": "uni", "kind": "oidc", "display_name": "University",
     "issuer": "https://id.example", "client_id": "...", "client_secret": "...",
     "scopes": "openid email", "username_claim": "email"}
    {"name": "github", "kind": "github", "client_id": "...", "client_secret": "...",
     "github_url": "https://github.com", "api_url": "https://api.github.com"}   # URLs optional

Flow: ``GET /api/login/<name>`` stores ``state`` (random; the key), ``nonce``, a PKCE verifier and
the page to return to in the tokens table (10 minutes), sets a cookie with a hash-bound copy of the
state (so a callback is honoured only in the browser that started it: no login CSRF), and
redirects to the provider. ``GET /api/login/<name>/callback`` consumes the state once (a
conditional delete), exchanges the code, and for OIDC verifies the ID token against the provider's
JWKS (signature with the key's own algorithm, ``iss``, ``aud`` = client id, ``exp``, ``nonce``);
GitHub's user comes from its API with the access token. The user is then ``<name>@<provider>``
(created on first login, never an admin by default) and gets a normal session.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec

from control_plane import replies
from control_plane.accounts import Accounts, Session
from control_plane.errors import BadRequest, ConfigError, NotFound, Unauthorized
from control_plane.table import ConditionFailed, Table
from protocol.errors import TokenError
from protocol.tokens import KeySet

STATE_SECONDS = 600
HTTP_TIMEOUT = 10
LOGIN_COOKIE = "dit4c_login"
_SAFE_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,30}$")


@dataclass(frozen=True)
class Provider:
    name: str
    kind: str
    display_name: str
    client_id: str
    client_secret: str
    issuer: str = ""
    scopes: str = "openid email profile"
    username_claim: str = "sub"
    github_url: str = "https://github.com"
    api_url: str = "https://api.github.com"

    def public(self) -> replies.Provider:
        return replies.Provider(name=self.name, display_name=self.display_name,
                                kind=self.kind, login_url=f"/api/login/{self.name}")


def parse_providers(text: str | None) -> dict[str, Provider]:
    if not text:
        return {}
    try:
        entries = json.loads(text)
        providers = {}
        for entry in entries:
            kind = entry.get("kind", "oidc")
            if kind not in ("oidc", "github") or not _SAFE_NAME.match(entry["name"]):
                raise ValueError(f"bad name or kind in {entry.get('name')!r}")
            if kind == "oidc" and not entry.get("issuer"):
                raise ValueError(f"{entry['name']}: an OIDC provider needs 'issuer'")
            fields = {k: str(v) for k, v in entry.items() if k in Provider.__dataclass_fields__}
            fields.setdefault("display_name", entry["name"])
            fields["kind"] = kind
            providers[entry["name"]] = Provider(**fields)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(f"DIT4C_LOGIN_PROVIDERS: {exc}") from None
    return providers


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def safe_next(value: str | None) -> str:
    """Only a path on the portal itself (no scheme, no host, no ``//``) is a place to return to."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    return value[:1000]


class HttpJson:
    """GET/POST returning JSON with a timeout (the seam tests can replace; stdlib only)."""

    def get(self, url: str, headers: dict[str, str] | None = None) -> Any:
        return self._open(urllib.request.Request(url, headers=headers or {}))  # noqa: S310

    def post(self, url: str, form: dict[str, str], headers: dict[str, str] | None = None) -> Any:
        data = urllib.parse.urlencode(form).encode()
        request = urllib.request.Request(url, data=data, headers={  # noqa: S310
            "Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json",
            **(headers or {})})
        return self._open(request)

    @staticmethod
    def _open(request: urllib.request.Request) -> Any:
        if urllib.parse.urlsplit(request.full_url).scheme not in ("http", "https"):
            raise Unauthorized("identity provider URL must be http(s)")
        try:
            with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT) as response:  # noqa: S310
                return json.loads(response.read(1024 * 1024))
        except (urllib.error.URLError, ValueError, TimeoutError) as exc:
            raise Unauthorized(f"the identity provider did not answer properly: {exc}") from None


class LoginProviders:
    def __init__(self, providers: dict[str, Provider], tokens: Table, accounts: Accounts,
                 portal_url: str, http: HttpJson | None = None) -> None:
        self.providers = providers
        self.tokens = tokens
        self.accounts = accounts
        self.portal_url = portal_url
        self.http = http or HttpJson()
        self._discovery: dict[str, tuple[float, dict[str, Any]]] = {}

    def listing(self) -> list[replies.Provider]:
        return [p.public() for p in self.providers.values()]

    def provider(self, name: str) -> Provider:
        provider = self.providers.get(name)
        if provider is None:
            raise NotFound(f"no login provider {name!r}")
        return provider

    def redirect_uri(self, provider: Provider) -> str:
        return f"{self.portal_url}/api/login/{provider.name}/callback"

    # --- step 1 -----------------------------------------------------------------------

    def start(self, name: str, next_path: str | None) -> tuple[str, str]:
        """Returns (provider URL to redirect to, value of the browser-binding cookie)."""
        provider = self.provider(name)
        state, nonce, verifier = (secrets.token_urlsafe(32) for _ in range(3))
        self.tokens.put({"token_key": "login-state:" + _digest(state), "provider": name,
                         "nonce": nonce, "verifier": verifier, "next": safe_next(next_path),
                         "expires_at": int(time.time()) + STATE_SECONDS})
        params = {"response_type": "code", "client_id": provider.client_id,
                  "redirect_uri": self.redirect_uri(provider), "state": state}
        if provider.kind == "oidc":
            endpoint = self._config(provider)["authorization_endpoint"]
            params.update({"scope": provider.scopes, "nonce": nonce,
                           "code_challenge": _b64(hashlib.sha256(verifier.encode()).digest()),
                           "code_challenge_method": "S256"})
        else:
            endpoint = f"{provider.github_url}/login/oauth/authorize"
            params["scope"] = "read:user"
        return f"{endpoint}?{urllib.parse.urlencode(params)}", _digest("cookie:" + state)

    # --- step 2 -----------------------------------------------------------------------

    def finish(self, name: str, params: dict[str, str], cookie: str | None
               ) -> tuple[Session, str]:
        """Verify the callback; returns the new session and where to send the browser."""
        provider = self.provider(name)
        if params.get("error"):
            raise Unauthorized(f"the identity provider refused: {params['error'][:100]}")
        state, code = params.get("state", ""), params.get("code", "")
        if not state or not code or len(state) > 200 or len(code) > 2000:
            raise BadRequest("callback needs 'code' and 'state'")
        if not cookie or not hmac.compare_digest(cookie, _digest("cookie:" + state)):
            raise Unauthorized("this login was not started in this browser")
        try:
            grant = self.tokens.delete({"token_key": "login-state:" + _digest(state)},
                                       condition="attribute_exists(token_key)")
        except ConditionFailed:
            raise Unauthorized("login state is unknown or already used") from None
        if grant is None or grant["expires_at"] < time.time() or grant["provider"] != name:
            raise Unauthorized("login state expired")
        form = {"grant_type": "authorization_code", "code": code,
                "redirect_uri": self.redirect_uri(provider), "client_id": provider.client_id,
                "client_secret": provider.client_secret}
        if provider.kind == "oidc":
            config = self._config(provider)
            answer = self.http.post(config["token_endpoint"],
                                    {**form, "code_verifier": grant["verifier"]})
            claims = self._verify_id_token(provider, config, answer, grant["nonce"])
            subject = claims.get(provider.username_claim)
        else:
            answer = self.http.post(f"{provider.github_url}/login/oauth/access_token", form)
            token = answer.get("access_token") if isinstance(answer, dict) else None
            if not isinstance(token, str):
                raise Unauthorized("GitHub gave no access token")
            user = self.http.get(f"{provider.api_url}/user", {
                "Authorization": f"Bearer {token}", "Accept": "application/vnd.github+json"})
            subject = user.get("login") if isinstance(user, dict) else None
        if not isinstance(subject, str) or not subject:
            raise Unauthorized(f"the identity provider sent no {provider.username_claim!r}")
        username = _username(subject, name)
        user = self.accounts.ensure_external_user(username, name)
        return self.accounts.start_session(user), grant["next"]

    def _verify_id_token(self, provider: Provider, config: dict[str, Any], answer: Any,
                         nonce: str) -> dict[str, Any]:
        token = answer.get("id_token") if isinstance(answer, dict) else None
        if not isinstance(token, str):
            raise Unauthorized("the identity provider sent no ID token")
        try:
            header = jwt.get_unverified_header(token)
            keys = KeySet.from_jwks(self.http.get(config["jwks_uri"]))
            kid = header.get("kid")
            key = keys.get(kid) if isinstance(kid, str) else None
            if key is None:
                raise TokenError("ID token signed by an unknown key")
            alg = "ES256" if isinstance(key, ec.EllipticCurvePublicKey) else "RS256"
            claims: dict[str, Any] = jwt.decode(
                token, key, algorithms=[alg], audience=provider.client_id,
                issuer=config["issuer"], leeway=30,
                options={"require": ["exp", "iat", "iss", "aud", "sub"]})
        except (TokenError, jwt.exceptions.InvalidTokenError) as exc:
            raise Unauthorized(f"ID token refused: {exc}") from None
        if not hmac.compare_digest(str(claims.get("nonce", "")), nonce):
            raise Unauthorized("ID token refused: wrong nonce")
        return claims

    def _config(self, provider: Provider) -> dict[str, Any]:
        cached = self._discovery.get(provider.name)
        if cached and time.monotonic() - cached[0] < 3600:
            return cached[1]
        config = self.http.get(provider.issuer.rstrip("/") + "/.well-known/openid-configuration")
        needed = ("issuer", "authorization_endpoint", "token_endpoint", "jwks_uri")
        if not isinstance(config, dict) or not all(isinstance(config.get(k), str)
                                                   for k in needed):
            raise Unauthorized("the identity provider's discovery document is incomplete")
        if config["issuer"].rstrip("/") != provider.issuer.rstrip("/"):
            raise Unauthorized("the identity provider's discovery names another issuer")
        self._discovery[provider.name] = (time.monotonic(), config)
        return config


def _username(subject: str, provider: str) -> str:
    local = re.sub(r"[^a-z0-9_.-]", "-", subject.lower()).strip("-._") or "user"
    return f"{local[:63 - len(provider) - 1]}@{provider}"
