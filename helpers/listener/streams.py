"""A tunnel stream served in-process: an asyncio transport over :class:`protocol.tunnel.Stream`.

In a pod the listener hands each stream the router opens to the auth gate
(:mod:`helpers.auth.gate`) in the same process, instead of a TCP connection to the auth helper
on ``127.0.0.1``: the request bytes cross one hop fewer (every hop on loopback costs two sends
and two receives in the kernel, the larger part of a small request's price), and the gate sees
them exactly as it would on a socket, through the transport interface it already uses.

Flow control maps onto the stream's credit: the gate pausing its reading withholds the credit
for what it received (the router then stops at the window); a write beyond the credit pauses
the gate's writing (it stops reading the tool) until the router grants more.
"""

from __future__ import annotations

import asyncio
from typing import Any

from protocol.tunnel import Stream


class StreamTransport(asyncio.Transport):
    """Both ends of one stream: the :class:`protocol.tunnel.Sink` the mux feeds, and the
    transport the serving protocol writes to. ``close`` half-closes (EOF: the router ends the
    browser's connection once the response is out); ``abort`` ends the stream at once."""

    def __init__(self, protocol: asyncio.Protocol) -> None:
        super().__init__()
        self._protocol = protocol
        self.stream: Stream | None = None
        self._reading_paused = False
        self._writing_paused = False
        self._unacked = 0
        self._closing = False
        self._lost = False

    def attach(self, stream: Stream, first: memoryview) -> None:
        self.stream = stream
        self._protocol.connection_made(self)
        if first:
            self.stream_data(first)

    # --- the stream's sink (protocol.tunnel.Sink) ------------------------------------------

    def stream_data(self, data: memoryview) -> None:
        if self._lost:
            return
        self._protocol.data_received(bytes(data))
        if self._reading_paused:
            self._unacked += len(data)
        elif self.stream is not None:
            self.stream.consumed(len(data))

    def stream_eof(self) -> None:
        if not self._lost and not self._protocol.eof_received():
            self.close()

    def stream_closed(self, reason: str) -> None:
        self._connection_lost()

    def stream_writable(self) -> None:
        if self._writing_paused and not self._lost:
            self._writing_paused = False
            self._protocol.resume_writing()

    # --- the transport the protocol writes to ----------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or self.stream is None:
            return
        if not self.stream.write(bytes(data) if isinstance(data, bytearray) else data) \
                and not self._writing_paused:
            self._writing_paused = True
            self._protocol.pause_writing()

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        if self.stream is not None:
            self.stream.write_eof()

    def abort(self) -> None:
        self._closing = True
        if self.stream is not None:
            self.stream.close("aborted by the auth gate")
        asyncio.get_running_loop().call_soon(self._connection_lost)

    def _connection_lost(self) -> None:
        if not self._lost:
            self._lost = True
            self._closing = True
            self._protocol.connection_lost(None)

    def is_closing(self) -> bool:
        return self._closing

    def pause_reading(self) -> None:
        self._reading_paused = True

    def resume_reading(self) -> None:
        self._reading_paused = False
        if self._unacked and self.stream is not None:
            unacked, self._unacked = self._unacked, 0
            self.stream.consumed(unacked)

    def is_reading(self) -> bool:
        return not self._reading_paused

    def can_write_eof(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default  # no socket, no peer address: the router's X-Forwarded-For says who
