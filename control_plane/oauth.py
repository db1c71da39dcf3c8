"""The portal's OAuth2 authorization server: every instance's auth helper is one of its clients.

Flow (RFC 6749 authorization code + RFC 7636 PKCE S256, confidential clients):

1. At launch the control plane calls :meth:`OAuthServer.register_client` for the instance; the
   client id and secret travel to the node in ``StartInstance.oauth``. The redirect URI is fixed
   to ``<instance URL>/.dit4c/auth/callback``; only a hash of the secret is stored.
2. ``GET /oauth/authorize`` (a portal session is required): :meth:`OAuthServer.authorize` checks
   the client, the exact redirect URI, the PKCE challenge and that the user may use the instance,
   then stores a single-use code (60 s) bound to client, redirect URI, challenge and user.
3. ``POST /oauth/token`` (client authentication): :meth:`OAuthServer.token` redeems the code (or
   a refresh token) once and returns a short-lived JWT access token (``aud`` =
   ``protocol.tokens.instance_audience(id)``, ``sub`` = username) and a rotating refresh token.
   Every grant re-checks access, so revoking a share or discarding the instance ends access at
   the next renewal: within the access token's lifetime.
4. At once, when asked: :meth:`OAuthServer.notify_revoked` POSTs a signed revocation to the
   instance's ``/.dit4c/auth/revoke`` (through the router), and its auth helper ends that user's
   sessions and WebSockets.

Codes and refresh tokens live in the tokens table under ``oauth-code#<sha256>`` and
``oauth-refresh#<sha256>`` (never in clear). Redemption is a conditional write, so a code or
refresh token works once; presenting one again revokes the whole grant (RFC 6749 10.5, OAuth
2.0 Security BCP 4.14): every refresh token descended from it stops working.

Errors (RFC 6749 5.2 / 4.1.2.1), each with its HTTP status and ``error`` code::

    OAuthError                    root; ``as_json()`` is the RFC body
    ├── InvalidRequest            400 invalid_request
    ├── InvalidClient             401 invalid_client (token endpoint: bad client authentication)
    ├── InvalidGrant              400 invalid_grant (bad, used, expired or foreign code/token)
    ├── UnsupportedGrantType      400 unsupported_grant_type
    ├── UnsupportedResponseType   400 unsupported_response_type
    ├── InvalidScope              400 invalid_scope
    └── AccessDenied              403 access_denied (the user may not use this instance)

An error raised by :meth:`OAuthServer.authorize` carries ``redirect_uri`` only once the client
and its redirect URI are verified; only then may it be sent back to the client (RFC 6749 4.1.2.1).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
import secrets
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol
from urllib.parse import unquote, urlencode, urlsplit, urlunsplit

from control_plane.table import ConditionFailed, Table
from protocol.pod import REVOKE_PATH
from protocol.tokens import (
    ACCESS_TOKEN_MAX_LIFETIME,
    ALL_USERS,
    access_claims,
    pkce_challenge,
    revocation_claims,
)

log = logging.getLogger("dit4c.control_plane.oauth")

CODE_LIFETIME = 60
"""Seconds an authorization code can be redeemed in (RFC 6749 recommends at most 10 minutes)."""
REFRESH_LIFETIME = 12 * 3600
"""A grant's absolute life: after it the helper sends the browser through authorize again."""
SCOPES = frozenset({"instance"})
"""The one scope there is: use the instance. Omitting ``scope`` means the same."""

MAX_STATE = 1024
"""``state`` is echoed into a Location header: keep it bounded."""

CODE_PREFIX = "oauth-code#"
REFRESH_PREFIX = "oauth-refresh#"
REVOKED_PREFIX = "oauth-grant-revoked#"

# RFC 7636 4.1: a verifier is 43-128 unreserved characters; an S256 challenge is 43 base64url.
_VERIFIER = re.compile(r"[A-Za-z0-9\-._~]{43,128}")
_CHALLENGE = re.compile(r"[A-Za-z0-9\-_]{43}")


class OAuthError(Exception):
    """Root of the OAuth2 server's errors; ``status`` and ``error`` are the RFC 6749 response."""

    status: ClassVar[int] = 400
    error: ClassVar[str] = "invalid_request"

    def __init__(self, description: str, *, redirect_uri: str | None = None,
                 state: str | None = None) -> None:
        super().__init__(description)
        self.description = description
        self.redirect_uri = redirect_uri
        self.state = state

    def as_json(self) -> dict[str, str]:
        return {"error": self.error, "error_description": self.description}

    def redirect_url(self) -> str | None:
        """Where to send the browser with this error, or None when it must not be redirected."""
        if self.redirect_uri is None:
            return None
        params = {**self.as_json(), **({"state": self.state} if self.state is not None else {})}
        return _with_query(self.redirect_uri, params)


class InvalidRequest(OAuthError):
    pass


class InvalidClient(OAuthError):
    status = 401
    error = "invalid_client"


class InvalidGrant(OAuthError):
    error = "invalid_grant"


class UnsupportedGrantType(OAuthError):
    error = "unsupported_grant_type"


class UnsupportedResponseType(OAuthError):
    error = "unsupported_response_type"


class InvalidScope(OAuthError):
    error = "invalid_scope"


class AccessDenied(OAuthError):
    status = 403
    error = "access_denied"


class Signer(Protocol):
    """Signs claims with the portal's current key (``KeyStore`` or a ``SigningKey``)."""

    def sign(self, claims: dict[str, Any]) -> str: ...


@dataclass(frozen=True)
class Client:
    """A registered instance: what the tokens it receives are bound to."""

    client_id: str
    instance_id: str
    redirect_uri: str


@dataclass(frozen=True)
class BackChannel:
    """A POST with no body to an auth helper's ``REVOKE_PATH``."""

    url: str
    headers: dict[str, str]


BACK_CHANNEL_TIMEOUT = 5.0


def _post(request: BackChannel) -> int:
    # urllib, not aiohttp: this runs in Lambda.
    sent = urllib.request.Request(request.url, data=b"", headers=request.headers,  # noqa: S310
                                  method="POST")
    try:
        with urllib.request.urlopen(sent, timeout=BACK_CHANNEL_TIMEOUT) as response:  # noqa: S310
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def _hash(secret: str) -> str:
    # Codes, tokens and client secrets are 256-bit random strings: a plain digest suffices (no
    # password stretching), and makes the stored value useless to a reader of the table.
    return hashlib.sha256(secret.encode()).hexdigest()


def _with_query(uri: str, params: Mapping[str, str]) -> str:
    parts = urlsplit(uri)
    query = "&".join(q for q in (parts.query, urlencode(params)) if q)
    return urlunsplit(parts._replace(query=query))


class OAuthServer:
    """Authorization server over two DynamoDB tables; the caller supplies who may use what.

    - ``clients``: the OAuthClientsTable (key ``client_id``) as a :class:`Table`.
    - ``tokens``: the TokensTable (key ``token_key``, TTL ``expires_at``); this class writes only
      keys starting with ``oauth-``. TTL deletion is lazy, so expiry is also checked on read.
    - ``signer`` signs access tokens (the ``KeyStore``: keys rotate); ``issuer`` (the portal
      URL) is their ``iss``.
    - ``can_access(username, instance_id)``: True when the user owns the instance or it is
      shared with them, False otherwise (also for an instance that no longer exists).
    - ``clock``: seconds since the epoch.
    """

    def __init__(self, *, clients: Table, tokens: Table, signer: Signer, issuer: str,
                 can_access: Callable[[str, str], bool],
                 clock: Callable[[], float] = time.time,
                 access_lifetime: int = ACCESS_TOKEN_MAX_LIFETIME) -> None:
        self._clients = clients
        self._tokens = tokens
        self._signer = signer
        self._issuer = issuer
        self._can_access = can_access
        self._clock = clock
        self._access_lifetime = min(access_lifetime, ACCESS_TOKEN_MAX_LIFETIME)

    # --- clients ---------------------------------------------------------------------------

    def register_client(self, instance_id: str, redirect_uri: str,
                        owner: str | None = None) -> tuple[str, str]:
        """Make (or replace) the instance's client; returns ``(client_id, client_secret)``.

        Registering again replaces the secret: the old one stops working at once.
        """
        parts = urlsplit(redirect_uri)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.fragment:
            raise InvalidRequest(f"redirect URI must be an absolute http(s) URL: {redirect_uri!r}")
        client_id = f"instance-{instance_id}"
        secret = secrets.token_urlsafe(32)
        # Same fields as control_plane.instance_clients.TableClientRegistrar writes, so clients
        # registered before this server was wired in keep working.
        self._clients.put({
            "client_id": client_id, "instance_id": instance_id, "owner": owner,
            "redirect_uris": [redirect_uri], "secret_sha256": _hash(secret),
            "created_at": int(self._clock()),
        })
        return client_id, secret

    def delete_client(self, instance_id: str) -> None:
        """Forget the instance's client; its refresh tokens then fail. Deleting twice is fine."""
        self._clients.delete({"client_id": f"instance-{instance_id}"})

    # ``control_plane.instance_clients.ClientRegistrar``: the scheduler's seam.
    def register(self, *, instance_id: str, owner: str, redirect_uri: str) -> tuple[str, str]:
        return self.register_client(instance_id, redirect_uri, owner)

    def forget(self, instance_id: str) -> None:
        self.delete_client(instance_id)

    def _client(self, client_id: str) -> tuple[Client, str] | None:
        item = self._clients.get({"client_id": client_id}) if client_id else None
        if item is None:
            return None
        return (Client(item["client_id"], item["instance_id"], item["redirect_uris"][0]),
                item["secret_sha256"])

    def authenticate_client(self, form: Mapping[str, str], authorization: str | None) -> Client:
        """RFC 6749 2.3.1: HTTP Basic (preferred) or ``client_id``/``client_secret`` in the form."""
        if authorization is not None:
            if "client_secret" in form:
                raise InvalidRequest("use one client authentication method, not two")
            scheme, _, value = authorization.partition(" ")
            if scheme.lower() != "basic":
                raise InvalidClient("client authentication must use HTTP Basic")
            try:
                decoded = base64.b64decode(value.strip(), validate=True).decode()
            except (ValueError, UnicodeDecodeError):
                raise InvalidClient("malformed HTTP Basic credentials") from None
            raw_id, sep, raw_secret = decoded.partition(":")
            if not sep:
                raise InvalidClient("malformed HTTP Basic credentials")
            client_id, secret = unquote(raw_id), unquote(raw_secret)
            if form.get("client_id", client_id) != client_id:
                raise InvalidRequest("client_id in the form differs from the authenticated one")
        else:
            client_id, secret = form.get("client_id", ""), form.get("client_secret", "")
            if not client_id or not secret:
                raise InvalidClient("client authentication required")
        found = self._client(client_id)
        # Compare against a dummy hash for unknown clients too, so timing tells nothing.
        expected = found[1] if found else _hash(secrets.token_urlsafe(32))
        if not hmac.compare_digest(_hash(secret), expected) or found is None:
            raise InvalidClient("unknown client or wrong secret")
        return found[0]

    # --- authorization endpoint ------------------------------------------------------------

    def authorize(self, username: str, params: Mapping[str, str]) -> str:
        """Handle an authorization request of a logged-in user; return the redirect URL.

        ``params`` are the request's query parameters (``response_type``, ``client_id``,
        ``redirect_uri``, ``code_challenge``, ``code_challenge_method``, ``state``, ``scope``).
        """
        found = self._client(params.get("client_id", ""))
        if found is None:
            raise InvalidRequest("unknown client_id")
        client = found[0]
        if params.get("redirect_uri") != client.redirect_uri:
            raise InvalidRequest("redirect_uri does not match the client's registered URI")
        # From here on the redirect URI is trusted: errors go back to the client.
        state = params.get("state")
        if state is not None and len(state) > MAX_STATE:
            raise InvalidRequest(f"state longer than {MAX_STATE} characters",
                                 redirect_uri=client.redirect_uri)
        back = {"redirect_uri": client.redirect_uri, "state": state}
        if params.get("response_type") != "code":
            raise UnsupportedResponseType("response_type must be 'code'", **back)
        if params.get("code_challenge_method") != "S256":
            raise InvalidRequest("PKCE with code_challenge_method=S256 is required", **back)
        challenge = params.get("code_challenge", "")
        if not _CHALLENGE.fullmatch(challenge):
            raise InvalidRequest("code_challenge must be 43 base64url characters", **back)
        scope = self._scope(params.get("scope"), back)
        if not self._can_access(username, client.instance_id):
            raise AccessDenied(f"{username} may not use instance {client.instance_id}")
        code = secrets.token_urlsafe(32)
        self._put_new(CODE_PREFIX + _hash(code), {
            "client_id": client.client_id, "instance_id": client.instance_id,
            "redirect_uri": client.redirect_uri, "code_challenge": challenge,
            "username": username, "scope": scope, "grant_id": uuid.uuid4().hex,
            "expires_at": int(self._clock()) + CODE_LIFETIME,
        })
        return _with_query(client.redirect_uri,
                           {"code": code, **({"state": state} if state is not None else {})})

    @staticmethod
    def _scope(scope: str | None, back: Mapping[str, Any]) -> str:
        requested = set((scope or "instance").split())
        if not requested <= SCOPES:
            raise InvalidScope(f"unknown scope {' '.join(sorted(requested - SCOPES))!r}", **back)
        return " ".join(sorted(requested))

    # --- token endpoint --------------------------------------------------------------------

    def token(self, form: Mapping[str, str], authorization: str | None = None) -> dict[str, Any]:
        """Handle a token request (form fields, ``Authorization`` header); return the JSON body."""
        client = self.authenticate_client(form, authorization)
        grant_type = form.get("grant_type")
        if grant_type == "authorization_code":
            return self._from_code(client, form)
        if grant_type == "refresh_token":
            return self._from_refresh(client, form)
        if not grant_type:
            raise InvalidRequest("grant_type is required")
        raise UnsupportedGrantType(f"grant_type {grant_type!r} is not supported")

    def _from_code(self, client: Client, form: Mapping[str, str]) -> dict[str, Any]:
        code, verifier = form.get("code", ""), form.get("code_verifier", "")
        if not code:
            raise InvalidRequest("code is required")
        if not _VERIFIER.fullmatch(verifier):
            raise InvalidRequest("code_verifier must be 43-128 unreserved characters")
        grant = self._redeem(CODE_PREFIX + _hash(code), client, "authorization code")
        # The code is spent now whatever follows: a wrong verifier must not get a second try.
        if form.get("redirect_uri") != grant["redirect_uri"]:
            raise InvalidGrant("redirect_uri differs from the authorization request")
        if not hmac.compare_digest(pkce_challenge(verifier), grant["code_challenge"]):
            raise InvalidGrant("code_verifier does not match the code_challenge")
        expires_at = int(self._clock()) + REFRESH_LIFETIME
        return self._issue(client, grant, expires_at)

    def _from_refresh(self, client: Client, form: Mapping[str, str]) -> dict[str, Any]:
        refresh = form.get("refresh_token", "")
        if not refresh:
            raise InvalidRequest("refresh_token is required")
        grant = self._redeem(REFRESH_PREFIX + _hash(refresh), client, "refresh token")
        return self._issue(client, grant, int(grant["grant_expires_at"]))

    def _redeem(self, key: str, client: Client, what: str) -> dict[str, Any]:
        """Mark a code or refresh token used (exactly once) and return its record.

        A second presentation revokes the grant it belongs to: one of the two presenters is an
        attacker, and we cannot tell which.
        """
        now = int(self._clock())
        try:
            item = self._tokens.update(
                {"token_key": key}, "SET used_at = :now",
                condition="attribute_exists(token_key) AND attribute_not_exists(used_at)",
                vals={":now": now},
            )
        except ConditionFailed:
            old = self._tokens.get({"token_key": key})
            if old is not None:
                self._revoke_grant(str(old["grant_id"]))
                raise InvalidGrant(f"{what} was already used; its grant is revoked") from None
            raise InvalidGrant(f"unknown or expired {what}") from None
        if int(item["expires_at"]) <= now:
            raise InvalidGrant(f"{what} expired")
        if item["client_id"] != client.client_id:
            self._revoke_grant(str(item["grant_id"]))
            raise InvalidGrant(f"{what} was issued to another client")
        if self._grant_revoked(str(item["grant_id"])):
            raise InvalidGrant("the grant was revoked")
        if not self._can_access(str(item["username"]), client.instance_id):
            raise InvalidGrant(f"{item['username']} may no longer use this instance")
        return item

    def _issue(self, client: Client, grant: Mapping[str, Any], grant_expires_at: int) -> dict[
            str, Any]:
        now = int(self._clock())
        claims = access_claims(issuer=self._issuer, instance_id=client.instance_id,
                               username=str(grant["username"]), client_id=client.client_id,
                               lifetime=self._access_lifetime, now=now)
        body: dict[str, Any] = {
            "access_token": self._signer.sign(claims), "token_type": "Bearer",
            "expires_in": claims["exp"] - now, "scope": grant["scope"],
        }
        if grant_expires_at > now:
            refresh = secrets.token_urlsafe(32)
            self._put_new(REFRESH_PREFIX + _hash(refresh), {
                "client_id": client.client_id, "instance_id": client.instance_id,
                "username": grant["username"], "scope": grant["scope"],
                "grant_id": grant["grant_id"], "grant_expires_at": grant_expires_at,
                "expires_at": grant_expires_at,
            })
            body["refresh_token"] = refresh
        return body

    # --- back-channel ----------------------------------------------------------------------

    def revocation_request(self, instance_id: str, instance_url: str,
                           username: str = ALL_USERS, *, via: str | None = None) -> BackChannel:
        """The signed request that makes the instance's auth helper end ``username``'s sessions
        at once (every session for ``ALL_USERS``). ``via``: where to send it when the instance
        URL does not resolve from here: the router's base URL; the ``Host`` header then names
        the instance. ``*.localhost`` instance URLs (the local stack) go to 127.0.0.1."""
        token = self._signer.sign(revocation_claims(
            issuer=self._issuer, instance_id=instance_id, username=username, now=self._clock()))
        public = urlsplit(instance_url)
        host = public.hostname or ""
        if via is None and (host == "localhost" or host.endswith(".localhost")):
            # RFC 6761: *.localhost is loopback, but Python's resolver does not know it.
            via = urlunsplit(public._replace(netloc=f"127.0.0.1:{public.port or 80}", path=""))
        base = (via or instance_url).rstrip("/")
        return BackChannel(base + REVOKE_PATH,
                           {"Authorization": f"Bearer {token}", "Host": public.netloc})

    def notify_revoked(self, instance_id: str, instance_url: str, username: str = ALL_USERS,
                       *, via: str | None = None,
                       post: Callable[[BackChannel], int] | None = None) -> bool:
        """Best effort: True when the helper confirmed. When it cannot be reached the access
        token's lifetime still bounds access (the next renewal re-checks it)."""
        request = self.revocation_request(instance_id, instance_url, username, via=via)
        try:
            status = (post or _post)(request)
        except OSError as exc:
            log.warning("back-channel revocation of %s on %s failed: %s", username,
                        instance_id, exc)
            return False
        if status != 200:
            log.warning("back-channel revocation of %s on %s answered %d", username,
                        instance_id, status)
        return status == 200

    # --- storage ---------------------------------------------------------------------------

    def _put_new(self, key: str, fields: Mapping[str, Any]) -> None:
        # A collision of 256-bit random keys would be a bug; never overwrite silently.
        self._tokens.put({"token_key": key, **fields},
                         condition="attribute_not_exists(token_key)")

    def _revoke_grant(self, grant_id: str) -> None:
        self._tokens.put({"token_key": REVOKED_PREFIX + grant_id,
                          "expires_at": int(self._clock()) + REFRESH_LIFETIME})

    def _grant_revoked(self, grant_id: str) -> bool:
        return self._tokens.get({"token_key": REVOKED_PREFIX + grant_id}) is not None
