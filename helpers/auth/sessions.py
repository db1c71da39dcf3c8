"""Sessions and logins in progress, in the helper's memory.

A browser's cookie holds only a random 256-bit id. Everything else (user, tokens) stays here,
so a cookie copied to another instance, or forged, finds nothing. A helper restart forgets all
sessions; users then pass through the portal again, which is silent while their portal session
lasts.

Logins in progress keep no state here: a flood of sign-in starts (every anonymous GET is one)
cannot push out anyone's sign-in. The ``state`` sent through the portal carries the login
itself (when it started, the page to go back to) and a MAC over it and the browser's login
cookie, under a key that lives only in this process; the PKCE verifier is derived from the
state with the same key, so it never leaves the helper. A state works once: finished states
are remembered until they expire (a bounded memory that only a completed round trip through
the callback adds to; past the bound the oldest are forgotten early, and the portal's
single-use codes still stop a replay).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from helpers.auth.portal import Tokens
from helpers.auth.proxy import WebSocketLink

LOGIN_LIFETIME = 600.0
"""Seconds a browser has to come back from the portal with the code."""
MAX_FINISHED_LOGINS = 10_000
"""Finished states remembered (until they expire) so that each works once."""
MAX_NEXT_PATH = 2048
"""A longer first page is not carried through the sign-in (the state rides in a URL)."""
SESSION_IDLE_LIMIT = 12 * 3600.0
"""A session not used for this long is forgotten (the portal's grants end by then anyway)."""


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class PendingLogin:
    """A login this helper started: the browser must return with ``state`` and its nonce."""

    state: str
    verifier: str
    browser_nonce: str
    next_path: str
    started: float


@dataclass(eq=False)
class Session:
    session_id: str
    tokens: Tokens
    last_used: float
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    websockets: set[WebSocketLink] = field(default_factory=set)

    @property
    def username(self) -> str:
        return self.tokens.username

    def renew_at(self) -> float:
        """Renew when four fifths of the token's life are gone: well before it expires."""
        life = self.tokens.expires_at - self.tokens.issued_at
        return self.tokens.issued_at + 0.8 * life


class SessionStore:
    """Sessions by id, and the logins this helper started (kept in their ``state``, see the
    module docstring); ``clock`` is seconds (monotonic-free: token times are wall-clock)."""

    def __init__(self, clock: Callable[[], float] = time.time, *,
                 key: bytes | None = None) -> None:
        self._clock = clock
        self._key = key or secrets.token_bytes(32)
        self._sessions: dict[str, Session] = {}
        self._finished: OrderedDict[str, float] = OrderedDict()
        """state -> when it expires, for the states that came back."""

    # --- logins in progress ----------------------------------------------------------------

    def _mac(self, purpose: str, *parts: str) -> str:
        message = "\x00".join((purpose, *parts)).encode()
        return _b64(hmac.new(self._key, message, hashlib.sha256).digest())

    def start_login(self, browser_nonce: str, next_path: str) -> PendingLogin:
        started = self._clock()
        if len(next_path) > MAX_NEXT_PATH:
            next_path = "/"
        payload = _b64(json.dumps([started, next_path, secrets.token_hex(8)]).encode())
        state = f"{payload}.{self._mac('state', payload, browser_nonce)}"
        return PendingLogin(state, self._mac("pkce", state), browser_nonce, next_path, started)

    def finish_login(self, state: str, browser_nonce: str | None) -> PendingLogin | None:
        """The login ``state`` stands for, if this helper made it for this browser (its
        login cookie's nonce) within ``LOGIN_LIFETIME`` and it has not come back before;
        else None."""
        payload, _, mac = state.partition(".")
        if browser_nonce is None or not hmac.compare_digest(
                mac.encode(), self._mac("state", payload, browser_nonce).encode()):
            return None
        try:
            started, next_path, _ = json.loads(base64.urlsafe_b64decode(
                payload + "=" * (-len(payload) % 4)))
        except ValueError:
            return None  # made by us, so never: but a key is no reason to crash
        now = self._clock()
        if not started <= now + 5 or now - started > LOGIN_LIFETIME:
            return None
        self._expire_finished(now)
        if state in self._finished:
            return None
        self._finished[state] = started + LOGIN_LIFETIME
        while len(self._finished) > MAX_FINISHED_LOGINS:
            self._finished.popitem(last=False)
        return PendingLogin(state, self._mac("pkce", state), browser_nonce, str(next_path),
                            float(started))

    def _expire_finished(self, now: float) -> None:
        while self._finished:
            state, expires = next(iter(self._finished.items()))
            if expires > now:
                break
            del self._finished[state]

    # --- sessions --------------------------------------------------------------------------

    def create(self, tokens: Tokens) -> Session:
        session = Session(new_secret(), tokens, self._clock())
        self._sessions[session.session_id] = session
        return session

    def get(self, session_id: str | None) -> Session | None:
        session = self._sessions.get(session_id) if session_id else None
        if session is not None:
            session.last_used = self._clock()
        return session

    def drop(self, session: Session) -> None:
        self._sessions.pop(session.session_id, None)

    def all(self) -> list[Session]:
        return list(self._sessions.values())

    def sweep(self) -> None:
        """Forget sessions idle for too long whose tokens cannot be renewed any more."""
        now = self._clock()
        for session in self.all():
            idle = now - session.last_used > SESSION_IDLE_LIMIT
            dead = session.tokens.refresh_token is None and session.tokens.expires_at < now
            if (idle or dead) and not session.websockets:
                self.drop(session)
        self._expire_finished(now)
