"""HTTP/1.1 head parsing and body framing (protocol.http1), as the router and the gate use it."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import http1
from protocol.errors import HttpError


def test_request_head_is_rewritten() -> None:
    head = http1.parse_request(
        b"GET /x?y HTTP/1.1\r\nHost: Abc.Example.ORG:8080\r\nConnection: keep-alive, X-Hop\r\n"
        b"X-Hop: 1\r\nTE: trailers\r\nX-Forwarded-For: 6.6.6.6\r\nAccept: */*")
    assert head.host == "abc.example.org"
    assert head.framing == http1.LENGTH and head.length == 0
    out = head.encode("10.0.0.1", b"https")
    assert out.startswith(b"GET /x?y HTTP/1.1\r\nHost: Abc.Example.ORG:8080\r\nAccept: */*\r\n")
    assert b"X-Hop" not in out and b"TE:" not in out and b"6.6.6.6" not in out
    assert out.endswith(b"X-Forwarded-For: 10.0.0.1\r\nX-Forwarded-Proto: https\r\n"
                        b"X-Forwarded-Host: Abc.Example.ORG:8080\r\n\r\n")


def test_upgrade_request_keeps_its_upgrade_headers() -> None:
    head = http1.parse_request(b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\n"
                               b"Upgrade: websocket")
    assert head.upgrade == b"websocket"
    assert b"Connection: upgrade\r\nUpgrade: websocket" in head.encode("1.2.3.4", b"http")


def test_response_head_framing() -> None:
    chunked = http1.parse_response(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nKeep-Alive: timeout=5",
        request_method=b"GET", upgrade=None, close=False)
    assert chunked.framing == http1.CHUNKED and not chunked.close
    assert b"Keep-Alive" not in chunked.head
    head = http1.parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 10",
                                request_method=b"HEAD", upgrade=None, close=False)
    assert head.framing == http1.LENGTH and head.length == 0
    until_close = http1.parse_response(b"HTTP/1.0 200 OK", request_method=b"GET",
                                       upgrade=None, close=False)
    assert until_close.framing == http1.UNTIL_CLOSE and until_close.close
    assert until_close.head.endswith(b"Connection: close\r\n\r\n")


@pytest.mark.parametrize("raw", [
    b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2",
    b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked",
    b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip",
    b"GET / HTTP/1.1\r\nHost: a\r\nX: a\rb",
    b"GET / HTTP/1.1\r\nHost: a\r\n X: folded",
    b"GET / HTTP/1.1\r\nHost: a:b",
    b"GET /",
])
def test_ambiguous_or_malformed_requests_are_refused(raw: bytes) -> None:
    with pytest.raises(HttpError):
        http1.parse_request(raw)


def chunked(parts: list[bytes]) -> bytes:
    return b"".join(b"%x;x=y\r\n%s\r\n" % (len(p), p) for p in parts if p) + b"0\r\nT: 1\r\n\r\n"


@given(st.lists(st.binary(min_size=1, max_size=50), max_size=6), st.integers(1, 17),
       st.binary(max_size=10))
def test_chunked_end_is_found_across_any_split(parts: list[bytes], step: int,
                                               after: bytes) -> None:
    body = chunked(parts)
    data = body + after
    tracker = http1.BodyTracker(http1.CHUNKED, 0)
    end = -1
    for start in range(0, len(data), step):
        piece = memoryview(data[start:start + step])
        found = tracker.advance(piece, 0)
        if found >= 0:
            end = start + found
            break
    assert end == len(body)


def test_length_body_ends_exactly() -> None:
    tracker = http1.BodyTracker(http1.LENGTH, 5)
    assert tracker.advance(memoryview(b"abc"), 0) == -1
    assert tracker.advance(memoryview(b"deNEXT"), 0) == 2
    assert tracker.done


@pytest.mark.parametrize("body", [
    b"0x5\r\nhello\r\n0\r\n\r\n", b"+5\r\nhello\r\n0\r\n\r\n", b"-0\r\n\r\n",
    b"5_0\r\n", b" 5\r\n", b"5 \r\n", b"5\nhello\r\n0\r\n\r\n", b"5\r\nhello\n",
    b"0\r\nX\x01: y\r\n\r\n", b"0\r\nX: \x01\r\n\r\n", b"0\r\nno colon\r\n\r\n",
])
def test_lenient_chunk_lines_are_refused(body: bytes) -> None:
    with pytest.raises(HttpError):
        http1.BodyTracker(http1.CHUNKED, 0).advance(memoryview(body), 0)


def test_chunk_extensions_and_trailers_pass() -> None:
    body = b"5 ;a=b\r\nhello\r\n0\r\nX-T: t\tu\r\n\r\n"
    assert http1.BodyTracker(http1.CHUNKED, 0).advance(memoryview(body), 0) == len(body)


@pytest.mark.parametrize("raw", [
    b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x01b", b"GET / HTTP/1.1\r\nHost: a\r\nX: \x7f",
    b"GET /a\nb HTTP/1.1\r\nHost: a", b"GET /a\x00 HTTP/1.1\r\nHost: a",
])
def test_control_characters_are_refused(raw: bytes) -> None:
    with pytest.raises(HttpError):
        http1.parse_request(raw)


def test_x_real_ip_is_dropped() -> None:
    head = http1.parse_request(b"GET / HTTP/1.1\r\nHost: a\r\nX-Real-IP: 6.6.6.6")
    assert b"6.6.6.6" not in head.encode("10.0.0.1", b"http")
