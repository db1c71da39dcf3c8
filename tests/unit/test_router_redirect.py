"""Where the plain-HTTP listener redirects: only to this router's instance hosts, on HTTPS."""

from __future__ import annotations

import pytest

from edge_router.redirect import location


@pytest.mark.parametrize(("host", "target", "port", "expected"), [
    ("abc123.example.org", b"/lab?x=1", 443, b"https://abc123.example.org/lab?x=1"),
    ("abc123.example.org", b"/", 8443, b"https://abc123.example.org:8443/"),
    # Not a plain path: the instance's root, never anything taken from the target.
    ("abc123.example.org", b"http://evil.example/", 443, b"https://abc123.example.org/"),
    ("abc123.example.org", b"*", 443, b"https://abc123.example.org/"),
    ("abc123.example.org", b"/a\x7fb", 443, b"https://abc123.example.org/"),
    ("evil.example", b"/", 443, None),
    ("example.org", b"/", 443, None),
    ("a.abc123.example.org", b"/", 443, None),
])
def test_location(host: str, target: bytes, port: int, expected: bytes | None) -> None:
    assert location(host, target, domain="example.org", https_port=port) == expected
