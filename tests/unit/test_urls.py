"""The return-path rule the portal and the auth helper share (protocol.urls)."""

import pytest

from protocol.urls import same_origin_path


@pytest.mark.parametrize(("value", "expected"), [
    ("/portal/x?y=1#z", "/portal/x?y=1#z"), (None, "/"), ("", "/"),
    ("https://evil.example/", "/"), ("//evil.example/", "/"), ("/\\evil.example", "/"),
    ("javascript:alert(1)", "/"), ("/\t/evil.example", "/"), ("/\r\n/evil.example", "/"),
    ("\t//evil.example", "/"), (" //evil.example", "/"), ("\\\\evil.example", "/"),
    ("///evil.example", "/"), ("java\tscript:alert(1)", "/"), ("/x\\y", "/x/y"),
    ("/a b", "/a%20b"), ("/\u00e9", "/%C3%A9"), ("/%09/x", "/%09/x"), ("/" + "x" * 1000, "/"),
])
def test_only_same_origin_paths_are_return_targets(value, expected):
    assert same_origin_path(value) == expected
