"""The auth gate's WebSocket frame follower (helpers.auth.gate.FrameBoundary), split anywhere."""

from __future__ import annotations

import struct

import pytest

from helpers.auth.gate import FrameBoundary, close_frame


def frame(opcode: int, payload: bytes, mask: bytes | None = None) -> bytes:
    size = len(payload)
    second = 0x80 if mask is not None else 0
    if size < 126:
        head = bytes((0x80 | opcode, second | size))
    elif size < 1 << 16:
        head = bytes((0x80 | opcode, second | 126)) + struct.pack("!H", size)
    else:
        head = bytes((0x80 | opcode, second | 127)) + struct.pack("!Q", size)
    return head + (mask or b"") + payload


STREAM = (frame(0x1, b"hi") + frame(0x2, b"x" * 300) + frame(0x1, b"")
          + frame(0x2, b"y" * 70000))
ENDS = [4, 4 + 304, 4 + 304 + 2, len(STREAM)]


@pytest.mark.parametrize("split", [1, 2, 3, 5, 7, 13, 64, 1000, len(STREAM)])
def test_frame_ends_are_found_however_the_bytes_arrive(split: int) -> None:
    frames = FrameBoundary()
    found, offset = [], 0
    pieces = [STREAM[i:i + split] for i in range(0, len(STREAM), split)]
    for piece in pieces:
        start = 0
        while start < len(piece):
            end = frames.feed(piece[start:], stop=True)
            if end < 0:
                break
            found.append(offset + start + end)
            start += end
        offset += len(piece)
    assert found == ENDS
    assert frames.at_boundary


def test_a_masked_close_from_the_browser_is_seen() -> None:
    frames = FrameBoundary()
    data = frame(0x1, b"late", b"abcd") + frame(0x8, struct.pack("!H", 1000), b"abcd")
    for byte in data[:-2]:  # its header (with the mask) is complete, its payload not yet
        frames.feed(bytes([byte]))
    assert frames.close_seen


def test_the_close_frame_we_send() -> None:
    assert close_frame(1008, "access revoked") == b"\x88\x10\x03\xf0access revoked"
