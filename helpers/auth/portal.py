"""The portal as the auth helper sees it: the token endpoint and the JWKS.

:class:`Portal` exchanges codes and refresh tokens (client authentication: HTTP Basic) and
verifies every access token it receives before anything trusts it: signature by a key of the
portal's JWKS, the portal as issuer, audience = this instance, a user in ``sub``, a life of at
most five minutes (:func:`protocol.tokens.verify_access`). A back-channel revocation must be
the portal's too, and works once: its ``jti`` is remembered until it expires, so a captured
one cannot be replayed. The JWKS is cached and fetched again when a token names
an unknown ``kid`` (key rotation), at most once per ``JWKS_MIN_REFETCH`` seconds so that forged
tokens cannot make us hammer the portal.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp

from helpers.auth.errors import GrantRefused, PortalError
from protocol.errors import TokenError
from protocol.tokens import (
    DEFAULT_LEEWAY_SECONDS,
    KeySet,
    unverified_kid,
    verify_access,
    verify_revocation,
)

log = logging.getLogger("dit4c.auth.portal")

JWKS_MIN_REFETCH = 30.0
TIMEOUT = aiohttp.ClientTimeout(total=15)
RECEIPT_LEEWAY = 5
"""Clock skew we tolerate between the portal and the pod when a token arrives."""


@dataclass(frozen=True)
class Tokens:
    """A verified access token, its claims, and the refresh token that came with it."""

    access_token: str
    claims: dict[str, Any]
    refresh_token: str | None

    @property
    def username(self) -> str:
        return str(self.claims["sub"])

    @property
    def expires_at(self) -> float:
        return float(self.claims["exp"])

    @property
    def issued_at(self) -> float:
        return float(self.claims["iat"])


class Portal:
    """Talks to the portal for one client (one instance); ``http`` is owned by the caller."""

    def __init__(self, http: aiohttp.ClientSession, *, instance_id: str, issuer: str,
                 client_id: str, client_secret: str, token_url: str, jwks_url: str,
                 redirect_uri: str) -> None:
        self._http = http
        self._instance_id = instance_id
        self._issuer = issuer
        self._revocations_seen: dict[str, float] = {}
        """jti -> exp of the revocations acted on."""
        # RFC 6749 2.3.1: id and secret are form-encoded, then HTTP Basic. Built by hand
        # because aiohttp 3.14 deprecates ``auth=`` and 3.8 lacks its replacement.
        raw = f"{quote(client_id, safe='')}:{quote(client_secret, safe='')}".encode()
        self._auth_header = "Basic " + base64.b64encode(raw).decode()
        self._token_url = token_url
        self._jwks_url = jwks_url
        self._redirect_uri = redirect_uri
        self._keys = KeySet({})
        self._keys_fetched = -JWKS_MIN_REFETCH
        self._keys_lock = asyncio.Lock()

    async def redeem_code(self, code: str, verifier: str) -> Tokens:
        return await self._grant({"grant_type": "authorization_code", "code": code,
                                  "redirect_uri": self._redirect_uri,
                                  "code_verifier": verifier})

    async def refresh(self, refresh_token: str) -> Tokens:
        return await self._grant({"grant_type": "refresh_token", "refresh_token": refresh_token})

    async def _grant(self, form: dict[str, str]) -> Tokens:
        try:
            async with self._http.post(self._token_url, data=form,
                                       headers={"Authorization": self._auth_header},
                                       timeout=TIMEOUT, allow_redirects=False) as response:
                try:
                    body = await response.json(content_type=None)
                except ValueError:
                    body = None
                status = response.status
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise PortalError(f"token endpoint unreachable: {exc!r}") from exc
        if not isinstance(body, dict):
            raise PortalError(f"token endpoint answered {status} without a JSON object")
        if status != 200:
            if 400 <= status < 500 and isinstance(body.get("error"), str):
                raise GrantRefused(body["error"], str(body.get("error_description", "")))
            raise PortalError(f"token endpoint answered {status}")
        access, refresh = body.get("access_token"), body.get("refresh_token")
        if not isinstance(access, str) or str(body.get("token_type", "")).lower() != "bearer":
            raise PortalError("token endpoint gave no bearer access token")
        claims = await self.verify(access)
        return Tokens(access, claims, refresh if isinstance(refresh, str) else None)

    async def verify(self, token: str) -> dict[str, Any]:
        """The claims of a valid access token for this instance; TokenError otherwise."""
        return verify_access(token, await self._keys_for(token), issuer=self._issuer,
                             instance_id=self._instance_id, leeway=RECEIPT_LEEWAY)

    async def verify_revocation(self, token: str) -> dict[str, Any]:
        """The claims of a valid revocation for this instance, seen for the first time;
        TokenError otherwise."""
        claims = verify_revocation(token, await self._keys_for(token), issuer=self._issuer,
                                   instance_id=self._instance_id)
        now = time.time()
        self._revocations_seen = {j: e for j, e in self._revocations_seen.items() if e > now}
        jti = str(claims["jti"])
        if jti in self._revocations_seen:
            raise TokenError("revocation already used")
        # Kept past exp by the verifier's leeway, while the token would still pass.
        self._revocations_seen[jti] = float(claims["exp"]) + DEFAULT_LEEWAY_SECONDS
        return claims

    async def prefetch_keys(self) -> None:
        """Fetch the JWKS before a token needs it (a helper's start: the first sign-in then
        waits for one portal call fewer). A failure is logged and forgotten: it must not hold
        back the fetch a real token makes."""
        try:
            await self._refresh_keys()
        except PortalError as exc:
            log.info("JWKS not fetched ahead (fetched at the first sign-in): %s", exc)
            self._keys_fetched = -JWKS_MIN_REFETCH

    async def _keys_for(self, token: str) -> KeySet:
        if unverified_kid(token) not in self._keys:
            await self._refresh_keys()
        return self._keys

    async def _refresh_keys(self) -> None:
        async with self._keys_lock:
            if time.monotonic() - self._keys_fetched < JWKS_MIN_REFETCH:
                return
            self._keys_fetched = time.monotonic()
            try:
                async with self._http.get(self._jwks_url, timeout=TIMEOUT) as response:
                    response.raise_for_status()
                    document = await response.json(content_type=None)
            except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
                raise PortalError(f"JWKS unavailable: {exc!r}") from exc
            try:
                self._keys = KeySet.from_jwks(document)
            except TokenError as exc:
                raise PortalError(f"JWKS is invalid: {exc}") from exc
            log.info("JWKS fetched from %s", self._jwks_url)
