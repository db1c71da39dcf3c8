"""Identifiers every part agrees on: the id syntax and how an instance id becomes a host.

An instance is reached at ``<instance id>.<router domain>``, so its id must be one DNS label
that cannot change under case-folding: lowercase letters and digits, 1 to 63 characters
(RFC 1035 2.3.4). The control plane makes ids of 16 hex digits (:func:`new_id`); every other
part accepts any id of this rule, so ids may grow without a change anywhere else. Clusters,
nodes and images use the same rule, because they appear in paths and queue names.
"""

from __future__ import annotations

import re
import secrets
from typing import Final

ID_PATTERN: Final = r"^[a-z0-9]{1,63}$"
"""The one id rule (also the OpenAPI ``pattern`` of every id in a path or body)."""
ID_MAX_LENGTH: Final = 63
_ID = re.compile(ID_PATTERN)


def is_id(value: object) -> bool:
    """True if ``value`` is an id of any kind (instance, node, cluster, image)."""
    # fullmatch, not match: with match, ``$`` would accept one trailing newline.
    return isinstance(value, str) and _ID.fullmatch(value) is not None


def new_id() -> str:
    """A fresh id: 64 random bits as 16 hex digits."""
    return secrets.token_hex(8)


def instance_host(instance_id: str, domain: str) -> str:
    """The public host of an instance (no port): what tunnel tokens bind."""
    if not is_id(instance_id):
        raise ValueError(f"{instance_id!r} is not an instance id ({ID_PATTERN})")
    return f"{instance_id}.{domain.lower()}"


def instance_of_host(host: str, domain: str) -> str | None:
    """The instance id if ``host`` (no port, any case) is ``<id>.<domain>``, else None."""
    if not host.isascii():  # str.lower() maps some non-ASCII letters (U+212A) to ASCII ones
        return None
    suffix = "." + domain.lower()
    host = host.lower()
    if not host.endswith(suffix):
        return None
    label = host[: -len(suffix)]
    return label if is_id(label) else None
