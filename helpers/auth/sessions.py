"""Sessions and logins in progress, in the helper's memory.

A browser's cookie holds only a random 256-bit id. Everything else (user, tokens) stays here,
so a cookie copied to another instance, or forged, finds nothing. A helper restart forgets all
sessions; users then pass through the portal again, which is silent while their portal session
lasts.

Both stores are bounded: a flood of anonymous requests evicts the oldest logins in progress,
never a session.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from helpers.auth.portal import Tokens
from helpers.auth.proxy import WebSocketLink

LOGIN_LIFETIME = 600.0
"""Seconds a browser has to come back from the portal with the code."""
MAX_PENDING_LOGINS = 1000
SESSION_IDLE_LIMIT = 12 * 3600.0
"""A session not used for this long is forgotten (the portal's grants end by then anyway)."""


def new_secret() -> str:
    return secrets.token_urlsafe(32)


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
    """Sessions by id and logins in progress by ``state``; ``clock`` is seconds (monotonic-free:
    token times are wall-clock)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._sessions: dict[str, Session] = {}
        self._pending: OrderedDict[str, PendingLogin] = OrderedDict()

    # --- logins in progress ----------------------------------------------------------------

    def start_login(self, browser_nonce: str, next_path: str) -> PendingLogin:
        self._expire_logins()
        while len(self._pending) >= MAX_PENDING_LOGINS:
            self._pending.popitem(last=False)
        login = PendingLogin(new_secret(), new_secret(), browser_nonce, next_path, self._clock())
        self._pending[login.state] = login
        return login

    def finish_login(self, state: str) -> PendingLogin | None:
        """The login ``state`` belongs to, removed (a state works once); None if unknown/old."""
        self._expire_logins()
        return self._pending.pop(state, None)

    def _expire_logins(self) -> None:
        cutoff = self._clock() - LOGIN_LIFETIME
        while self._pending:
            oldest = next(iter(self._pending.values()))
            if oldest.started >= cutoff:
                break
            self._pending.popitem(last=False)

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
        self._expire_logins()
