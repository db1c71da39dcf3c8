"""A pooled listener: started before any instance needs it, bound to one at launch.

With :data:`protocol.sandbox.ENV_SANDBOX` set, ``python3 -m helpers.listener`` imports
everything, warms up what is otherwise paid on the first sign-in, and reads binds on its
standard input (:mod:`protocol.sandbox`: one JSON line each, written by the node daemon over a
Docker attach). The first bind's settings (``protocol.pod`` names, merged over the environment)
start it exactly as a listener configured by its environment would start; it answers
``bound``, then probes the tool's port from inside the pod and answers ``ready`` once the tool
answers HTTP. A later bind for the same instance is answered again; one for another instance is
refused, so a sandbox serves one instance in its life.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol

from protocol import pod
from protocol.errors import MessageError
from protocol.sandbox import (
    BOUND,
    ERROR,
    MAX_LINE,
    PROBE_INTERVAL,
    READY,
    answer_line,
    parse_bind,
)

log = logging.getLogger("dit4c.listener.sandbox")

PROBE_TIMEOUT = 1.0
"""One attempt: a tool that accepted the connection but says nothing for this long is asked
again."""


class Serving(Protocol):
    """A listener that was started: its tool's address, and how to stop it."""

    instance_id: str
    tool: tuple[str, int]

    async def stop(self) -> None: ...


Start = Callable[[Mapping[str, str]], Awaitable[Serving]]
"""Starts the listener from settings (raises ``SettingsError`` naming a bad one)."""


def answer(kind: str, value: str) -> None:
    # One write(2) per line, unbuffered: the node reads it at once over its attach.
    os.write(sys.stdout.fileno(), answer_line(kind, value))


async def tool_answers(host: str, port: int) -> bool:
    """True if an HTTP server answers at ``host:port`` (any status)."""
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port), PROBE_TIMEOUT)
    except (OSError, TimeoutError):
        return False
    try:
        writer.write(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
        head = await asyncio.wait_for(reader.readexactly(5), PROBE_TIMEOUT)
        return head == b"HTTP/"
    except (OSError, TimeoutError, asyncio.IncompleteReadError):
        return False
    finally:
        writer.close()


async def wait_tool(serving: Serving) -> None:
    # Polled: nothing tells us when another process starts listening.
    while not await tool_answers(*serving.tool):  # noqa: ASYNC110
        await asyncio.sleep(PROBE_INTERVAL)


async def stdin_reader() -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=MAX_LINE)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


class Sandbox:
    """Reads binds from ``lines`` until ``stop``; see the module docstring."""

    def __init__(self, env: Mapping[str, str], start: Start) -> None:
        self.env = dict(env)
        self.start = start
        self.serving: Serving | None = None
        self._ready: asyncio.Task[None] | None = None
        self._answers: set[asyncio.Task[None]] = set()

    async def run(self, lines: asyncio.StreamReader, stop: asyncio.Event) -> None:
        stopping = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                reading = asyncio.ensure_future(lines.readline())
                await asyncio.wait({reading, stopping}, return_when=asyncio.FIRST_COMPLETED)
                if not reading.done():
                    reading.cancel()
                    break
                try:
                    line = reading.result()
                except ValueError:  # longer than MAX_LINE: the rest of the stream is unusable
                    answer(ERROR, "bind line too long")
                    break
                if not line:
                    if self.serving is None:
                        log.error("standard input closed before a bind came")
                        return
                    await stop.wait()  # bound: the node has nothing more to say
                    break
                await self.bind(line)
            if self.serving is not None:
                await stop.wait()
        finally:
            stopping.cancel()
            for task in [*self._answers, *([self._ready] if self._ready else [])]:
                task.cancel()
            if self.serving is not None:
                await self.serving.stop()

    async def bind(self, line: bytes) -> None:
        try:
            settings = parse_bind(line)
        except MessageError as exc:
            answer(ERROR, str(exc))
            return
        instance_id = settings.get(pod.ENV_INSTANCE_ID, "")
        if self.serving is not None:
            if instance_id != self.serving.instance_id:
                log.warning("bind for %s refused: bound to %s", instance_id,
                            self.serving.instance_id)
                answer(ERROR, f"this sandbox is bound to another instance "
                              f"({self.serving.instance_id})")
                return
        else:
            try:
                self.serving = await self.start({**self.env, **settings})
            except Exception as exc:  # SettingsError, or the gate's port taken: say why
                log.error("bind refused: %s", exc)
                answer(ERROR, str(exc))
                return
            log.info("bound to %s", self.serving.instance_id)
            self._ready = asyncio.ensure_future(wait_tool(self.serving))
        answer(BOUND, self.serving.instance_id)
        task = asyncio.ensure_future(self._answer_ready(self.serving.instance_id))
        self._answers.add(task)
        task.add_done_callback(self._answers.discard)

    async def _answer_ready(self, instance_id: str) -> None:
        assert self._ready is not None
        await asyncio.shield(self._ready)
        answer(READY, instance_id)
