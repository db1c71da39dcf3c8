"""Accounts (UsersTable), sessions (SessionsTable) and login throttling (TokensTable).

A session is a random token in an HttpOnly cookie; the table keeps only its SHA-256, so a leaked
table cannot be replayed as cookies. Each session has a CSRF token that state-changing requests
must echo in ``X-CSRF-Token`` (see :mod:`control_plane.web`).

Throttling: every failed login counts against the account and against the client address in
windows of ``WINDOW_SECONDS``; past the configured number of failures, further attempts are
refused with 429 and a ``Retry-After`` that doubles with every further failure (capped).
A successful login clears the account's counter.

Anyone can make those failures, so they must not lock the right password out: a successful
login gives the browser a device token (a cookie, ``DEVICE_SECONDS``; only its SHA-256 is
stored), and an attempt that presents a live device token of the account it names is counted
against that device alone, never against the account or the address (OWASP's "device cookie").
Guessing from elsewhere slows down the account for unknown browsers only; the owner's browser
logs in as usual. A device token is no credential: it only changes which counter applies.
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
DEVICE_SECONDS = 90 * 24 * 3600
"""How long a browser that logged in stays known to the throttle."""


@dataclass(frozen=True)
class User:
    username: str
    admin: bool
    provider: str = "local"
    display_name: str | None = None
    """What the identity provider calls the user (e-mail, login); None for local accounts."""

    def to_json(self) -> dict[str, Any]:
        return {"username": self.username, "admin": self.admin, "provider": self.provider,
                "display_name": self.display_name}


@dataclass(frozen=True)
class Session:
    session_id: str
    user: User
    csrf_token: str
    expires_at: int


@dataclass(frozen=True)
class LoggedIn:
    """A password login's outcome: the session, and the browser's device token to keep."""

    session: Session
    device: str


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
        return user_of(item)

    def exists(self, username: str) -> bool:
        return self.users.get({"username": username}, consistent=False) is not None

    # --- login ------------------------------------------------------------------------

    def login(self, credentials: Login, address: str, device: str | None = None) -> LoggedIn:
        """Check a password. ``address``: the client's; ``device``: the browser's device token
        (see the module docstring), if it sent one."""
        name = credentials.username.lower()
        known = self._device_key(device, name)
        user = self.authenticate(credentials, address, known_device=known)
        if known is None or device is None:
            device = self._new_device(name)
        return LoggedIn(self.start_session(user), device)

    def authenticate(self, credentials: Login, address: str, *,
                     known_device: str | None = None) -> User:
        """The user whose password this is (throttled as a login: per account and address,
        or per known device), or Unauthorized; starts no session (the image server's token
        service asks this for ``docker login``'s Basic credentials)."""
        name, password = credentials.username.lower(), credentials.password
        known = known_device
        if known is not None:
            limits = {f"throttle:device:{known}": self.failures_per_account}
        else:
            limits = {f"throttle:user:{name}": self.failures_per_account,
                      f"throttle:addr:{address}": self.failures_per_address}
        self._check_throttle(list(limits))
        item = self.users.get({"username": name}) if USERNAME.match(name) else None
        if item is None or "password_hash" not in item:
            dummy_check(password)
            item = None
        elif not check_password(password, item["password_hash"]):
            item = None
        if item is None:
            for key, limit in limits.items():
                self._record_failure(key, limit)
            raise Unauthorized("wrong username or password")
        self.tokens.delete({"token_key": next(iter(limits))})
        return user_of(item)

    def _device_key(self, token: str | None, username: str) -> str | None:
        """The stored key of a live device token of ``username``, or None."""
        if not token or len(token) > 128:
            return None
        key = _digest(token)
        item = self.tokens.get({"token_key": "device:" + key}, consistent=False)
        if item is None or item.get("username") != username or item["expires_at"] < time.time():
            return None
        return key

    def _new_device(self, username: str) -> str:
        token = secrets.token_urlsafe(32)
        self.tokens.put({"token_key": "device:" + _digest(token), "username": username,
                         "expires_at": int(time.time()) + DEVICE_SECONDS})
        return token

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
        return Session(token, user_of(user), item["csrf_token"], item["expires_at"])

    def end_session(self, token: str) -> None:
        self.sessions.delete({"session_id": _digest(token)})


def user_of(item: Item) -> User:
    """The user an item of the users table describes."""
    return User(item["username"], bool(item.get("admin", False)), item.get("provider", "local"),
                item.get("display_name"))
