"""Free loopback ports for servers that tests and benchmarks start as separate processes.

In-process servers bind port 0 themselves; a child process told its port on the command line
or in its environment needs one picked beforehand. The port is free when this returns; the
child binds it a moment later (a race other suites on the same machine rarely win).
"""

from __future__ import annotations

import socket


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port
