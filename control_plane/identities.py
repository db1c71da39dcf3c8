"""External identities: the account a login through an identity provider belongs to.

An account is keyed on what the provider guarantees never to give anyone else: the OIDC issuer
and ``sub``, GitHub's numeric user id. Names, logins and e-mail addresses change hands
(a GitHub login is free again once renamed), and turning them into usernames loses
information (``alice+smith``, ``alice smith`` and ``alice@smith`` all became
``alice-smith@uni``), so they are only the display name and the first choice of username.

Storage (UsersTable, beside the accounts): a link item ``username = identity:<digest>`` (no
username can contain ``:``) names the account; the account carries the same ``identity``. The
link and a new account are written in one transaction, each conditional on not existing: two
people never get one account, and one person's simultaneous first logins make one account.
A username already taken gets a suffix (``alice-2@uni``).

Accounts made before this (no ``identity``; their username came from the provider's claim by
the old rule) keep working: the first login whose claim maps to the account under the old
rule binds it (:attr:`Identity.legacy`). Before that first login, two identities whose claims
collided under the old rule could still both reach such an account, as they could before; the
first to log in keeps it, and the other then gets an account of their own.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from dataclasses import dataclass

from control_plane.accounts import User, user_of
from control_plane.table import ConditionFailed, Table, transact

log = logging.getLogger("dit4c.control_plane.identities")

LINK_PREFIX = "identity:"
MAX_SUFFIX = 100
"""Usernames tried per login (``name``, ``name-2``, ...) before giving up."""


@dataclass(frozen=True)
class Identity:
    """Who an identity provider says logged in."""

    provider: str
    """The provider's configured name (the usernames' ``@`` suffix)."""
    authority: str
    """The OIDC issuer, or the GitHub URL: the namespace of ``subject``."""
    subject: str
    """Stable and never reassigned by the provider: OIDC ``sub``, GitHub's numeric id."""
    display_name: str
    """What people recognise (e-mail, login); may change, may be someone else's later."""
    legacy: str | None = None
    """The claim accounts were named after before identities were kept (old rule)."""

    @property
    def key(self) -> str:
        text = "\n".join((self.authority.rstrip("/"), self.subject))
        return hashlib.sha256(text.encode()).hexdigest()


def username_from(claim: str, provider: str, suffix: str = "") -> str:
    """A valid username made from a claim: ``<sanitised claim><suffix>@<provider>``, at most
    64 characters. (Without a suffix, the rule accounts were named by before.)"""
    local = re.sub(r"[^a-z0-9_.-]", "-", claim.lower()).strip("-._") or "user"
    return f"{local[:63 - len(provider) - 1 - len(suffix)]}{suffix}@{provider}"


class Identities:
    """Links from identities to accounts in the users table."""

    def __init__(self, users: Table) -> None:
        self.users = users

    def account_for(self, identity: Identity) -> User:
        """The identity's account, made (or, for an account from before, bound) at its first
        login; never an admin by default."""
        link = LINK_PREFIX + identity.key
        found = self._linked(link)
        if found is not None:
            return found
        adopted = self._adopt(identity, link)
        if adopted is not None:
            return adopted
        for n in range(1, MAX_SUFFIX + 1):
            username = username_from(identity.display_name, identity.provider,
                                     "" if n == 1 else f"-{n}")
            item = {"username": username, "provider": identity.provider, "admin": False,
                    "identity": identity.key, "display_name": identity.display_name[:256],
                    "created_at": int(time.time())}
            try:
                transact(self.users.client, [
                    self.users.put_op({"username": link, "target": username},
                                      condition="attribute_not_exists(username)"),
                    self.users.put_op(item, condition="attribute_not_exists(username)")])
            except ConditionFailed:
                found = self._linked(link)  # the same person, logging in twice at once
                if found is not None:
                    return found
                continue  # the username is someone else's
            log.info("account %s made for %s at %s", username, identity.display_name,
                     identity.provider)
            return user_of(item)
        raise RuntimeError(f"no free username for {identity.display_name!r} after "
                           f"{MAX_SUFFIX} tries")

    def _linked(self, link: str) -> User | None:
        item = self.users.get({"username": link})
        if item is None:
            return None
        account = self.users.get({"username": item["target"]})
        if account is None:
            raise RuntimeError(f"{link} names the missing account {item['target']!r}")
        return user_of(account)

    def _adopt(self, identity: Identity, link: str) -> User | None:
        """Bind an account made before identities were kept, if the old rule names it."""
        if identity.legacy is None:
            return None
        username = username_from(identity.legacy, identity.provider)
        account = self.users.get({"username": username})
        if account is None or account.get("provider") != identity.provider \
                or "identity" in account:
            return None
        try:
            transact(self.users.client, [
                self.users.put_op({"username": link, "target": username},
                                  condition="attribute_not_exists(username)"),
                self.users.update_op(
                    {"username": username}, "SET #i = :i, display_name = :d",
                    condition="attribute_not_exists(#i) AND provider = :p",
                    names={"#i": "identity"},
                    vals={":i": identity.key, ":d": identity.display_name[:256],
                          ":p": identity.provider})])
        except ConditionFailed:
            return self._linked(link)
        log.warning("account %s (made before identities were kept) is now bound to %s at %s",
                    username, identity.display_name, identity.provider)
        return user_of({**account, "display_name": identity.display_name})
