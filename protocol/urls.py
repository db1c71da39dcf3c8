"""Where a browser may be sent back to after signing in: one rule for the portal and the auth
helper, since both redirect to a path they were handed (``next``, the first page asked for).

:func:`same_origin_path` reads the value as the WHATWG URL standard has browsers read a
``Location``: leading and trailing C0 controls and spaces stripped, tab and newline removed
anywhere, ``\\`` taken as ``/``. So ``/<TAB>/evil.example`` (which a browser follows to
``//evil.example``, another host) and ``/\\evil.example`` are refused like ``//evil.example``
and ``https://evil.example``.
"""

from __future__ import annotations

import re
from typing import Final
from urllib.parse import quote, urlsplit

MAX_PATH: Final = 1000
"""A return path is echoed into a ``Location`` header: keep it bounded."""
_TAB_OR_NEWLINE = re.compile(r"[\t\n\r]")
_C0_OR_SPACE = "".join(map(chr, range(0x21)))
_KEPT = "/?#&=+%:;@!$'()*,-._~[]"
"""Printable ASCII that stays as is; the rest (spaces, quotes, controls, non-ASCII) is
percent-encoded, as a browser would when it sends the request."""


def same_origin_path(value: str | None) -> str:
    """``value`` normalised, if a browser would read it as a path on the current origin;
    else ``/``."""
    if not value or len(value) > MAX_PATH:
        return "/"
    path = _TAB_OR_NEWLINE.sub("", value.strip(_C0_OR_SPACE)).replace("\\", "/")
    if not path.startswith("/") or path.startswith("//"):
        return "/"
    path = quote(path, safe=_KEPT)
    parts = urlsplit("https://origin.invalid" + path)
    if parts.scheme != "https" or parts.netloc != "origin.invalid":
        return "/"
    return path
