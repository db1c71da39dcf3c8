"""Which names are safe in the user's storage: one check for the keys the store lists and
the names the tool asks for. Its own module, free of boto3: the storage helper's privileged
``run`` reads its settings with it and never imports the store (a launch waits for it)."""

from __future__ import annotations

MAX_NAME_BYTES = 255


def safe_name(name: str) -> bool:
    """True if ``name`` can be one part of a path: not empty, not ``.``/``..``, no ``/`` or
    NUL, at most 255 bytes."""
    return (name not in ("", ".", "..") and "/" not in name and "\0" not in name
            and len(name.encode()) <= MAX_NAME_BYTES)


def check_prefix(prefix: str) -> str:
    """The user's prefix, or ValueError: relative, ending in ``/``, every part safe."""
    if not prefix.endswith("/") or prefix.startswith("/"):
        raise ValueError(f"prefix {prefix!r} must be relative and end with '/'")
    if not all(safe_name(part) for part in prefix[:-1].split("/")):
        raise ValueError(f"prefix {prefix!r} has an empty, '.' or '..' part")
    return prefix
