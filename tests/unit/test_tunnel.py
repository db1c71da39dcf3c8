"""The tunnel wire format and its flow control, without sockets."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import tunnel
from protocol.errors import ProtocolError, TunnelError
from protocol.tunnel import CLOSE, DATA, EOF, OPEN, WINDOW, Mux


class RecordingSink:
    def __init__(self) -> None:
        self.data = bytearray()
        self.eof = False
        self.closed: str | None = None
        self.writable = 0

    def stream_data(self, data: memoryview) -> None:
        self.data += data

    def stream_eof(self) -> None:
        self.eof = True

    def stream_closed(self, reason: str) -> None:
        self.closed = reason

    def stream_writable(self) -> None:
        self.writable += 1


def frames(mux: Mux) -> list[tuple[int, int, bytes]]:
    parts, mux.outbox._parts = mux.outbox._parts, []
    return [(k, s, bytes(p)) for k, s, p in tunnel.decode(b"".join(parts))]


@given(st.lists(st.tuples(st.sampled_from(sorted(tunnel.KINDS)),
                          st.integers(0, 2**32 - 1), st.binary(max_size=64)), max_size=8))
def test_encode_decode_round_trip(items: list[tuple[int, int, bytes]]) -> None:
    message = b"".join(tunnel.encode(*item) for item in items)
    assert [(k, s, bytes(p)) for k, s, p in tunnel.decode(message)] == items


@pytest.mark.parametrize("message", [
    b"\x02\x00", tunnel.encode(DATA, 1, b"abc")[:-1], b"\x09" + bytes(8),
])
def test_malformed_messages_are_refused(message: bytes) -> None:
    with pytest.raises(TunnelError) as refused:
        list(tunnel.decode(message))
    assert isinstance(refused.value, ProtocolError)  # the shared contracts' one root


def test_credit_limits_bytes_in_flight_and_window_releases_them() -> None:
    router, pod = Mux(window=100), Mux(window=100)
    sink = RecordingSink()
    stream = router.open(sink, b"head")
    assert frames(router) == [(OPEN, stream.id, b"head")] if stream else False
    assert stream is not None
    assert stream.write(b"x" * 96) is True
    assert stream.write(b"y" * 50) is False  # out of credit: the source must pause
    sent = frames(router)
    assert sent == [(DATA, stream.id, b"x" * 96)]
    stream.write_eof()  # deferred until the held bytes are out
    assert frames(router) == []
    pod_sink = RecordingSink()
    pod_stream = pod.accept(stream.id, pod_sink)
    pod_stream.consumed(100)
    router.feed(b"".join(pod.outbox._parts))
    assert frames(router) == [(DATA, stream.id, b"y" * 50), (EOF, stream.id, b"")]
    assert sink.writable == 1


def test_peer_frames_reach_the_sink_and_close_forgets_the_stream() -> None:
    mux = Mux()
    sink = RecordingSink()
    stream = mux.open(sink)
    assert stream is not None
    mux.feed(tunnel.encode(DATA, stream.id, b"hello") + tunnel.encode(EOF, stream.id))
    assert bytes(sink.data) == b"hello" and sink.eof
    mux.feed(tunnel.encode(CLOSE, stream.id, b"bye"))
    assert sink.closed == "bye" and mux.streams == {}
    mux.feed(tunnel.encode(DATA, stream.id, b"late"))  # for a gone stream: ignored
    assert bytes(sink.data) == b"hello"


def test_only_the_listener_side_accepts_open_and_streams_are_limited() -> None:
    with pytest.raises(TunnelError):
        Mux().feed(tunnel.encode(OPEN, 1))
    opened: list[int] = []

    def on_open(stream_id: int, first: memoryview) -> None:
        opened.append(stream_id)
        mux.accept(stream_id, RecordingSink())

    mux = Mux(max_streams=1, on_open=on_open)
    mux.feed(tunnel.encode(OPEN, 1) + tunnel.encode(OPEN, 2))
    assert opened == [1]
    assert frames(mux) == [(CLOSE, 2, b"too many streams")]
    with pytest.raises(TunnelError):
        mux.feed(tunnel.encode(WINDOW, 1, b"\x00"))


def test_closing_the_mux_tells_every_sink() -> None:
    mux = Mux()
    sinks = [RecordingSink() for _ in range(3)]
    for sink in sinks:
        mux.open(sink)
    mux.close("tunnel lost")
    assert [s.closed for s in sinks] == ["tunnel lost"] * 3
    assert mux.open(RecordingSink()) is None


def test_a_peer_that_ignores_its_credit_is_cut_off() -> None:
    router = Mux(window=100)
    stream = router.open(RecordingSink())
    assert stream is not None
    router.feed(tunnel.encode(DATA, stream.id, b"x" * 100))
    stream.consumed(20)  # below a quarter of the window: no grant yet, nothing allowed
    with pytest.raises(TunnelError, match="beyond its window"):
        router.feed(tunnel.encode(DATA, stream.id, b"y"))
    pod = Mux(window=100, on_open=lambda sid, first: None)
    with pytest.raises(TunnelError, match="beyond its window"):
        pod.feed(tunnel.encode(OPEN, 7, b"z" * 101))


def test_granted_credit_allows_exactly_that_much_more() -> None:
    router = Mux(window=100)
    stream = router.open(RecordingSink())
    assert stream is not None
    router.feed(tunnel.encode(DATA, stream.id, b"x" * 100))
    stream.consumed(100)
    assert frames(router)[-1] == (WINDOW, stream.id, tunnel.CREDIT.pack(100))
    router.feed(tunnel.encode(DATA, stream.id, b"x" * 100))
    with pytest.raises(TunnelError):
        router.feed(tunnel.encode(DATA, stream.id, b"x"))


def test_a_peer_cannot_grant_more_than_was_sent() -> None:
    router = Mux(window=100)
    stream = router.open(RecordingSink(), b"head")
    assert stream is not None
    router.feed(tunnel.encode(WINDOW, stream.id, tunnel.CREDIT.pack(4)))  # for the OPEN bytes
    with pytest.raises(TunnelError, match="granted beyond"):
        router.feed(tunnel.encode(WINDOW, stream.id, tunnel.CREDIT.pack(1)))
