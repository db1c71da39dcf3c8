"""The image server's contracts: image references, token scopes and token claims.

The image server is a standard registry (CNCF Distribution, Debian's ``docker-registry``) with
token authentication: it trusts tokens that the portal signs (``GET /registry/token``, Docker's
token protocol). Several parts agree on what is here:

- the control plane issues tokens (:func:`registry_claims`) for the scopes its rules allow;
- the node daemon pulls with them and the upload helper pushes with them;
- the image exporter reads the export claim (:data:`EXPORT_CLAIM`) of the token in an export link.

Distribution 2.8 (Debian bookworm) verifies a token thus (``registry/auth/token/token.go``):
``iss`` must equal its ``issuer`` setting, ``aud`` must be **a string** equal to its ``service``
setting (a JSON list makes the token malformed), ``exp``/``nbf`` hold with 60 s of leeway, and
the signing key must be trusted: the header's ``x5c`` chain must verify against its
``rootcertbundle`` (or a ``kid`` must be the libtrust fingerprint of a key in that bundle).
The portal sends ``x5c`` (see ``control_plane/keys.py``), so that signing keys can rotate without
touching the registry. Access is the ``access`` claim: ``[{"type", "name", "actions"}]``; a
GET/HEAD needs ``pull``, a POST/PUT/PATCH ``pull`` and ``push``, a DELETE ``delete``.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from protocol.errors import RegistryError

DEFAULT_SERVICE: Final = "dit4c-registry"
"""The registry's ``service`` (token audience) unless configured otherwise."""

ACTIONS: Final = ("pull", "push", "delete")
PULL: Final = ("pull",)
PUSH: Final = ("pull", "push")

EXPORT_CLAIM: Final = "dit4c_export"
"""In an export link's token: ``{"repository", "digest", "name"}`` of the image to export."""

USER_TOKEN_LIFETIME: Final = 300
"""Tokens handed to users and nodes asking ``/registry/token``: revoking a share ends their
pulls within this many seconds (plus the registry's 60 s leeway)."""

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
REPOSITORY: Final = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
"""A repository name (Distribution's path grammar), at most :data:`MAX_REPOSITORY` long."""
COMPONENT: Final = re.compile(_COMPONENT)
MAX_REPOSITORY: Final = 255
TAG: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
DIGEST: Final = re.compile(r"sha256:[a-f0-9]{64}")


@dataclass(frozen=True)
class Access:
    """One entry of a token's ``access`` claim (and of a ``scope`` parameter)."""

    type: str
    name: str
    actions: tuple[str, ...]

    def claim(self) -> dict[str, Any]:
        return {"type": self.type, "name": self.name, "actions": list(self.actions)}

    def scope(self) -> str:
        return f"{self.type}:{self.name}:{','.join(self.actions)}"


def repository_access(name: str, actions: Sequence[str]) -> Access:
    return Access("repository", check_repository(name), tuple(actions))


def parse_scope(text: str) -> Access:
    """``repository:users/alice/x:pull,push`` (Docker's scope grammar; the type may carry a
    ``(class)``, which is dropped). Unknown actions are kept: the issuer grants what it
    recognises and nothing else."""
    head, sep, actions = text.rpartition(":")
    kind, sep2, name = head.partition(":")
    if not sep or not sep2 or not kind or not name:
        raise RegistryError(f"scope {text[:200]!r} is not type:name:actions")
    kind = kind.split("(", 1)[0]
    wanted = tuple(a for a in actions.split(",") if a)
    return Access(kind, name, wanted)


def check_repository(name: str) -> str:
    if len(name) > MAX_REPOSITORY or not REPOSITORY.fullmatch(name):
        raise RegistryError(f"{name[:300]!r} is not a repository name")
    return name


@dataclass(frozen=True)
class Reference:
    """``[registry/]repository[:tag][@digest]`` as Docker names an image."""

    registry: str
    """``host[:port]``, or "" for a name without one (Docker Hub, or an image built locally)."""
    repository: str
    tag: str | None = None
    digest: str | None = None

    def __str__(self) -> str:
        text = f"{self.registry}/{self.repository}" if self.registry else self.repository
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text

    @property
    def pinned(self) -> str:
        """What to pull: the digest if known, else the tag (``latest`` when neither)."""
        return self.digest or self.tag or "latest"


def parse_reference(text: str) -> Reference:
    """Split an image reference; the first component is a registry when it has a ``.`` or a
    ``:`` or is ``localhost`` (Docker's rule)."""
    rest, _, digest = text.partition("@")
    registry = ""
    first, slash, remainder = rest.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        registry, rest = first, remainder
    name, colon, tag = rest.rpartition(":")
    if not colon:
        name, tag = rest, ""
    if digest and not DIGEST.fullmatch(digest):
        raise RegistryError(f"{text[:300]!r}: {digest[:80]!r} is not a sha256 digest")
    if tag and not TAG.fullmatch(tag):
        raise RegistryError(f"{text[:300]!r}: {tag[:80]!r} is not a tag")
    check_repository(name)
    return Reference(registry, name, tag or None, digest or None)


def registry_claims(*, issuer: str, service: str, subject: str, access: Sequence[Access],
                    lifetime: int = USER_TOKEN_LIFETIME, now: float | None = None,
                    extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The claims of a registry token in the shape Distribution 2.8 verifies (``aud`` a
    string, ``nbf`` present)."""
    iat = int(now if now is not None else time.time())
    return {**(extra or {}), "iss": issuer, "sub": subject, "aud": service, "iat": iat,
            "nbf": iat, "exp": iat + lifetime, "jti": uuid.uuid4().hex,
            "access": [a.claim() for a in access]}
