"""scrypt password hashes: ``scrypt$<n>$<r>$<p>$<salt b64>$<hash b64>``.

Parameters travel with the hash so that they can be raised later without breaking old hashes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

N, R, P = 2**14, 8, 1
_MAXMEM = 64 * 1024 * 1024


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=N, r=R, p=P, maxmem=_MAXMEM)
    return "$".join(["scrypt", str(N), str(R), str(P), _b64(salt), _b64(digest)])


def check_password(password: str, encoded: str) -> bool:
    try:
        kind, n, r, p, salt, digest = encoded.split("$")
        if kind != "scrypt":
            return False
        actual = hashlib.scrypt(password.encode(), salt=_unb64(salt), n=int(n), r=int(r),
                                p=int(p), maxmem=_MAXMEM)
    except ValueError:
        return False
    return hmac.compare_digest(actual, _unb64(digest))


def dummy_check(password: str) -> None:
    """Spend the time of a real check, so unknown usernames do not answer faster."""
    check_password(password, _DUMMY)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode())


_DUMMY = "$".join(["scrypt", str(N), str(R), str(P), _b64(b"\0" * 16), _b64(b"\0" * 64)])
