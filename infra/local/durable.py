"""Acknowledged means durable: moto's state written through to the data directory.

moto keeps everything in memory; :mod:`infra.local.snapshot` copies it out now and then. In
between, every call that changes that state is journalled before its answer leaves:

1. :class:`JournaledApp` wraps moto's WSGI application. A call that changes what a snapshot
   holds (:func:`infra.local.writes.effect`) runs under one lock, and if moto answers 2xx the
   call is appended to the :class:`~infra.local.journal.Journal` before the lock is released,
   so the journal's order is the order moto applied them. The answer leaves once the record is
   synced to disk (syncs are grouped across threads), or with ``DIT4C_JOURNAL_SYNC=never`` once
   it is written (a killed process loses nothing then, a power cut may). Reads, and writes moto
   refused, pass through untouched.
2. :meth:`DurableState.recover`, at start: the newest good snapshot, then every journal record
   after it replayed into moto in order (the same requests, straight into the WSGI app); new
   changes go to a new segment. Damage is set aside and said, never silently dropped: see
   :class:`Recovery`.
3. Compaction (:meth:`DurableState.compact`): with writers held back, the journal moves to a
   new segment and the state is read; then, writers running again, that capture is written as
   the new snapshot, which holds everything before the new segment, and segments no snapshot
   needs any more are removed. A crash at any point leaves a snapshot and a journal that
   together hold every acknowledged call. :class:`Compactor` does this whenever the journal
   has grown past a size; the stack does it once more at every stop.

If the journal cannot be written (the disk is full), the call is answered 500, every later
change is refused, and :attr:`DurableState.failure` says why: the stack stops, rather than
acknowledge what it could lose.
"""

from __future__ import annotations

import contextlib
import io
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from infra.local.errors import JournalError, SnapshotError
from infra.local.journal import Journal
from infra.local.snapshot import Snapshotter, Summary
from infra.local.writes import Call, Effect, effect, object_put

log = logging.getLogger("dit4c.local.durable")

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

_PASS_THROUGH = frozenset({"GET", "HEAD", "OPTIONS"})
_UNAVAILABLE = (
    b'{"__type": "ServiceUnavailable", "message": "the local stack cannot save its state: '
    b'see its log"}'
)


@dataclass(frozen=True)
class _Answer:
    status: str
    headers: list[tuple[str, str]]
    body: bytes

    @property
    def ok(self) -> bool:
        return self.status[:1] == "2"


def _call(app: WsgiApp, environ: dict[str, Any]) -> _Answer:
    """Run a WSGI app to the end and keep its whole answer."""
    started: list[tuple[str, list[tuple[str, str]]]] = []
    chunks: list[bytes] = []

    def start_response(status: str, headers: list[tuple[str, str]],
                       exc_info: Any = None) -> Callable[[bytes], object]:
        started[:] = [(status, list(headers))]
        return chunks.append

    result = app(environ, start_response)
    try:
        chunks.extend(result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    status, headers = started[0]
    return _Answer(status, headers, b"".join(chunks))


class JournaledApp:
    """moto's WSGI app with every acknowledged change journalled first; see the module
    docstring. Passes everything through until :meth:`arm`. Put in front of moto with
    ``MotoServer(wrap=journaled.wrap)``."""

    def __init__(self) -> None:
        self.inner: WsgiApp = _not_wrapped
        self._gate = threading.Lock()
        self._journal: Journal | None = None
        self.failure: str | None = None

    def wrap(self, app: WsgiApp) -> JournaledApp:
        """Be the middleware in front of ``app`` (moto's, as the server builds it)."""
        self.inner = app
        return self

    def also(self, app: WsgiApp) -> JournaledApp:
        """Be the middleware of another server of the same moto (``app`` serves the same
        backends as the first: moto's state is one per process), so that changes made
        through it (the pods' S3 on their gateway) are journalled too."""
        del app  # equivalent to self.inner
        return self

    def arm(self, journal: Journal) -> None:
        """Journal from now on (after recovery: what is replayed must not be journalled)."""
        self._journal = journal

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """No change is applied while this is held (reads go on)."""
        with self._gate:
            yield

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) \
            -> Iterable[bytes]:
        journal = self._journal
        if journal is None or environ.get("REQUEST_METHOD") in _PASS_THROUGH:
            return self.inner(environ, start_response)
        call = Call.read(environ)
        # The body was read to be journalled: hand moto a fresh copy of it.
        environ["wsgi.input"] = io.BytesIO(call.body)
        environ["CONTENT_LENGTH"] = str(len(call.body))
        environ.pop("HTTP_TRANSFER_ENCODING", None)
        environ["wsgi.input_terminated"] = False
        kind = effect(call)
        if kind is None:
            return self.inner(environ, start_response)
        if self.failure is not None:
            return self._unavailable(start_response)
        sequence = 0
        with self._gate:
            answer = _call(self.inner, environ)
            if answer.ok:
                try:
                    record = call if kind is Effect.CALL else self._object(call)
                    sequence = journal.append(record.encode())
                except (JournalError, ValueError) as exc:
                    return self._fail(exc, call, start_response)
        if sequence:
            try:
                journal.sync(sequence)
            except JournalError as exc:
                return self._fail(exc, call, start_response)
        start_response(answer.status, answer.headers)
        return [answer.body]

    def _object(self, call: Call) -> Call:
        read = call.read_back()
        answer = _call(self.inner, read.to_environ())
        if not answer.ok:
            raise ValueError(f"reading back {read.describe()} answered {answer.status}")
        return object_put(read, answer.headers, answer.body)

    def _fail(self, exc: Exception, call: Call, start_response: Callable[..., Any]) \
            -> Iterable[bytes]:
        # moto has applied the change but it is not on disk: refuse this and every later one.
        self.failure = f"cannot journal {call.describe()}: {exc}"
        log.critical("%s; every further change is refused", self.failure)
        return self._unavailable(start_response)

    @staticmethod
    def _unavailable(start_response: Callable[..., Any]) -> Iterable[bytes]:
        start_response("500 Internal Server Error", [
            ("Content-Type", "application/x-amz-json-1.0"),
            ("Content-Length", str(len(_UNAVAILABLE))),
        ])
        return [_UNAVAILABLE]


def _not_wrapped(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    raise RuntimeError("JournaledApp.wrap(moto's app) first")


@dataclass
class Replayed:
    """What :func:`replay` did: how many calls applied, and why the others were refused."""

    applied: int = 0
    refused: list[str] = field(default_factory=list)


def replay(app: WsgiApp, records: list[bytes]) -> Replayed:
    """Hand each journalled call to moto's ``app`` again, in order."""
    replayed = Replayed()
    for payload in records:
        try:
            call = Call.decode(payload)
        except (ValueError, KeyError, TypeError) as exc:
            replayed.refused.append(f"an unreadable record ({exc})")
            continue
        answer = _call(app, call.to_environ())
        if answer.ok:
            replayed.applied += 1
        else:
            replayed.refused.append(f"{call.describe()}: {answer.status} "
                                    f"{answer.body[:200].decode('utf-8', 'replace')}")
    return replayed


@dataclass
class Recovery:
    """What :meth:`DurableState.recover` found and did."""

    restored: Summary = field(default_factory=Summary)
    replayed: int = 0
    notes: list[str] = field(default_factory=list)
    """Damage and what was done about it, one sentence each: the stack prints every one."""

    def __str__(self) -> str:
        return f"{self.restored}, then {self.replayed} journalled changes"


class DurableState:
    """The stack's AWS state on disk: a snapshot and the journal since; see the module
    docstring. ``recover`` once at start, then ``compact`` from any thread."""

    def __init__(self, app: JournaledApp, snapshotter: Snapshotter, journal: Journal) -> None:
        self._app = app
        self._snapshotter = snapshotter
        self._journal = journal
        self._compacting = threading.Lock()

    @property
    def failure(self) -> str | None:
        """Why changes can no longer be saved (the stack must stop), or None."""
        return self._app.failure

    @property
    def journal_bytes(self) -> int:
        return self._journal.size

    def recover(self) -> Recovery:
        """Restore the snapshot, replay the journal after it, and journal from a new segment.

        The replayed segments stay until a compaction makes them unnecessary: a crash before
        that replays them again, over the same snapshot, to the same state."""
        restored = self._snapshotter.restore()
        recovery = Recovery(restored.summary, notes=list(restored.notes))
        journalled = self._journal.read(restored.journal_from)
        if journalled.damage is not None:
            damage = self._journal.set_aside(journalled.damage)
            recovery.notes.append(str(damage))
        replayed = replay(self._app.inner, journalled.records)
        recovery.replayed = replayed.applied
        if replayed.refused:
            # The journal holds only calls that succeeded, in order, over the same state: one
            # refused now means that state differs. Say so; the rest still applied.
            recovery.notes.append(
                f"{len(replayed.refused)} of {len(journalled.records)} journalled changes were "
                f"refused on replay (first: {replayed.refused[0]}); the others are applied")
        for note in recovery.notes:
            log.warning("%s", note)
        segments = self._journal.segments()
        first = max(segments[-1] + 1 if segments else 0, restored.journal_from)
        self._journal.open(first)
        self._app.arm(self._journal)
        log.info("recovered %s", recovery)
        return recovery

    def compact(self) -> Summary:
        """Write a new snapshot and drop the journal it makes unnecessary."""
        with self._compacting:
            with self._app.held():
                segment = self._journal.rotate()
                capture = self._snapshotter.capture()
            summary, needed = self._snapshotter.write(capture, segment)
            self._journal.remove_before(needed)
            return summary

    def close(self) -> Summary:
        """The last compaction, once nothing writes any more; then the journal is closed."""
        try:
            return self.compact()
        finally:
            self._journal.close()


class Compactor:
    """Every ``interval`` seconds, compacts ``state`` when its journal holds ``limit`` bytes or
    more, in a thread, until ``stop()``. A failed compaction is logged and tried again at the
    next tick: the journal still holds everything, it only grows."""

    def __init__(self, state: DurableState, interval: float, limit: int,
                 stopping: threading.Event | None = None) -> None:
        self._state = state
        self._interval = interval
        self._limit = limit
        self._stopping = stopping or threading.Event()
        self._thread = threading.Thread(target=self._run, name="compactor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stopping.wait(self._interval):
            if self._state.journal_bytes < self._limit:
                continue
            try:
                summary = self._state.compact()
            except (SnapshotError, JournalError, OSError):
                log.exception("compaction failed; trying again in %.0f s", self._interval)
            else:
                log.info("compacted the journal into a snapshot of %s", summary)

    def stop(self) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
