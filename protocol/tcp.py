"""What every hop of the path does so that small messages never wait (docs/performance.md).

Our own sockets send at once: asyncio sets ``TCP_NODELAY`` on every TCP transport, and every
hop writes a message (a response, a tunnel batch, a WebSocket frame) in one ``write``.

The tool's sockets are not ours. Many tools leave Nagle's algorithm on (tornado, behind Jupyter,
clears ``TCP_NODELAY`` once a WebSocket is open) and answer with several small writes: each
write after the first waits until the reader has acknowledged the one before. Linux delays an
ACK by at least 40 ms when it expects to piggyback it on a reply, and a hop that only reads from
the tool never replies: every kernel answer took 44 ms through the path instead of 4 ms direct.
So whoever reads from a tool acknowledges each read at once (:func:`quick_ack`, before passing
the bytes on). ``TCP_QUICKACK`` is not sticky: the kernel goes back to delaying ACKs by itself,
hence once per read.
"""

from __future__ import annotations

import socket


def quick_ack(sock: socket.socket | None) -> None:
    """Send the ACK for what was just read now, not after the delayed-ACK timer."""
    if sock is not None:
        try:  # noqa: SIM105 - once per read: try is free, contextlib.suppress is not
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        except OSError:
            pass  # a socket closing under us needs no ACK
