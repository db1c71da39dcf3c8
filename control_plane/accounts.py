"""Accounts (UsersTable), sessions (SessionsTable) and login throttling (TokensTable).

A session is a random token in an HttpOnly cookie; the table keeps only its SHA-256, so a leaked
table cannot be replayed as cookies. Each session has a CSRF token that state-changing requests
must echo in ``X-CSRF-Token`` (see :mod:`control_plane.web`).

Throttling: every failed login counts against the account and against the client address in
windows of ``WINDOW_SECONDS``; past the configured number of failures, further attempts are
refused with 429 and a ``Retry-After`` that doubles with every further failure (capped).
A successful login clears the account's counter.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

from control_plane.bodies import USERNAME_PATTERN, Login, NewUser
from control_plane.errors import Conflict, TooManyRequests, Unauthorized
from control_plane.passwords import check_password, dummy_check, hash_password
from control_plane.schema import check
from control_plane.table import ConditionFailed, Item, Table

USERNAME = re.compile(USERNAME_PATTERN)
WINDOW_SECONDS = 900
MAX_LOCK_SECONDS = 900


@dataclass(frozen=True)
class User:
    username: str
    admin: bool
    provider: str = "local"

    def to_json(self) -> dict[str, Any]:
        return {"username": self.username, "admin": self.admin, "provider": self.provider}


@dataclass(frozen=True)
class Session:
    session_id: str
    user: User
    csrf_token: str
    expires_at: int


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def check_username(username: object) -> str:
    """A username made another way than by a request body (bootstrap, identity providers)."""
    name: str = check(NewUser, "username", username)
    return name


def check_new_password(password: object) -> str:
    secret: str = check(NewUser, "password", password)
    return secret


class Accounts:
    """Users, sessions and the login throttle over three tables."""

    def __init__(self, users: Table, sessions: Table, tokens: Table, *,
                 session_seconds: int, failures_per_account: int,
                 failures_per_address: int) -> None:
        self.users = users
        self.sessions = sessions
        self.tokens = tokens
        self.session_seconds = session_seconds
        self.failures_per_account = failures_per_account
        self.failures_per_address = failures_per_address

    # --- users ------------------------------------------------------------------------

    def create_user(self, new: NewUser) -> User:
        try:
            self.users.put({"username": new.username, "password_hash": hash_password(new.password),
                            "admin": new.admin, "provider": "local",
                            "created_at": int(time.time())},
                           condition="attribute_not_exists(username)")
        except ConditionFailed:
            raise Conflict(f"user {new.username!r} already exists") from None
        return User(new.username, new.admin)

    def set_password(self, username: str, password: str, *, admin: bool | None = None) -> User:
        """Create or reset a local account (bootstrap); keeps ``admin`` unless given."""
        secret = check_new_password(password)
        expression = ("SET password_hash = :h, provider = :p, "
                      "created_at = if_not_exists(created_at, :t)")
        vals: dict[str, Any] = {":h": hash_password(secret), ":p": "local", ":t": int(time.time())}
        if admin is not None:
            expression += ", admin = :a"
            vals[":a"] = admin
        item = self.users.update({"username": check_username(username)}, expression, vals=vals)
        return _user(item)

    def ensure_external_user(self, username: str, provider: str) -> User:
        """A user who logs in through an identity provider: created on first login."""
        item = self.users.update(
            {"username": check_username(username)},
            "SET provider = if_not_exists(provider, :p), admin = if_not_exists(admin, :f), "
            "created_at = if_not_exists(created_at, :t)",
            vals={":p": provider, ":f": False, ":t": int(time.time())})
        if item.get("provider") != provider:
            raise Conflict(f"user {username!r} belongs to another login provider")
        return _user(item)

    def exists(self, username: str) -> bool:
        return self.users.get({"username": username}, consistent=False) is not None

    # --- login ------------------------------------------------------------------------

    def login(self, credentials: Login, address: str) -> Session:
        username, password = credentials.username, credentials.password
        keys = [f"throttle:user:{username.lower()}", f"throttle:addr:{address}"]
        self._check_throttle(keys)
        name = username.lower()
        item = self.users.get({"username": name}) if USERNAME.match(name) else None
        if item is None or "password_hash" not in item:
            dummy_check(password)
            item = None
        elif not check_password(password, item["password_hash"]):
            item = None
        if item is None:
            self._record_failure(keys[0], self.failures_per_account)
            self._record_failure(keys[1], self.failures_per_address)
            raise Unauthorized("wrong username or password")
        self.tokens.delete({"token_key": keys[0]})
        return self.start_session(_user(item))

    def _check_throttle(self, keys: list[str]) -> None:
        now = time.time()
        for key in keys:
            item = self.tokens.get({"token_key": key}, consistent=False)
            if item and item.get("locked_until", 0) > now:
                wait = int(item["locked_until"] - now) + 1
                raise TooManyRequests(
                    f"too many failed logins; try again in {wait} seconds", retry_after=wait)

    def _record_failure(self, key: str, limit: int) -> None:
        now = int(time.time())
        item = self.tokens.update(
            {"token_key": key},
            "SET failures = if_not_exists(failures, :zero) + :one, "
            "expires_at = if_not_exists(expires_at, :exp)",
            vals={":zero": 0, ":one": 1, ":exp": now + WINDOW_SECONDS})
        if item.get("expires_at", 0) < now:  # an old window: start a new one
            item = self.tokens.update({"token_key": key},
                                      "SET failures = :one, expires_at = :exp REMOVE locked_until",
                                      vals={":one": 1, ":exp": now + WINDOW_SECONDS})
        over = int(item["failures"]) - limit
        if over >= 0:
            lock = min(2 ** (over + 1), MAX_LOCK_SECONDS)
            self.tokens.update({"token_key": key},
                               "SET locked_until = :u, expires_at = :e",
                               vals={":u": time.time() + lock,
                                     ":e": now + max(lock, WINDOW_SECONDS)})

    # --- sessions ---------------------------------------------------------------------

    def start_session(self, user: User) -> Session:
        token = secrets.token_urlsafe(32)
        csrf = secrets.token_urlsafe(24)
        expires = int(time.time()) + self.session_seconds
        self.sessions.put({"session_id": _digest(token), "username": user.username,
                           "csrf_token": csrf, "expires_at": expires})
        return Session(token, user, csrf, expires)

    def session(self, token: str) -> Session | None:
        """The live session for a cookie value (with the user's current admin flag)."""
        if not token or len(token) > 128:
            return None
        item = self.sessions.get({"session_id": _digest(token)}, consistent=False)
        if item is None or item["expires_at"] < time.time():
            return None
        user = self.users.get({"username": item["username"]}, consistent=False)
        if user is None:
            return None
        return Session(token, _user(user), item["csrf_token"], item["expires_at"])

    def end_session(self, token: str) -> None:
        self.sessions.delete({"session_id": _digest(token)})


def _user(item: Item) -> User:
    return User(item["username"], bool(item.get("admin", False)), item.get("provider", "local"))
