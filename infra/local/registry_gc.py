"""The image server's garbage collection on a schedule (frees what deleted images held).

Deleting a saved image deletes its manifest on the image server; the layers stay on disk until
the registry's own collector (``docker-registry garbage-collect --delete-untagged``) runs, and
that is only safe while no registry process serves the storage (it would race an upload). So,
every ``DIT4C_REGISTRY_GC_SECONDS``:

1. if an instance is being saved or started (a push or a pull may be under way), wait for the
   next turn;
2. stop the registry processes (the stack's watcher is told, so it does not take that for a
   crash), run the collector, start them again. Their downtime is the collector's run, about a
   second for a small store; a pull that meets it fails and is retried by the engine.
"""

from __future__ import annotations

import logging
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from infra.local import registry
from infra.local.children import Child

log = logging.getLogger("dit4c.local.registry_gc")

COLLECT_TIMEOUT = 600.0
READY_TIMEOUT = 20.0
STOP_WAIT = 5.0
"""How long stopping the stack waits for a collection under way (the stack then stops the
registries it restarted, through the same child objects)."""


class RegistryCollector:
    """Runs the collector every ``interval`` seconds on a thread of its own (see the module
    docstring). ``busy()`` says whether a push or pull may be under way; ``ready()`` whether
    the restarted registries answer."""

    def __init__(self, *, program: str, config: Path, children: Sequence[Child],
                 interval: float, stop_grace: float, busy: Callable[[], bool],
                 ready: Callable[[], bool], stopping: threading.Event) -> None:
        self._program = program
        self._config = config
        self._children = list(children)
        self._interval = interval
        self._grace = stop_grace
        self._busy = busy
        self._ready = ready
        self._stopping = stopping
        self._lock = threading.Lock()
        self.paused = False
        """True while the registries are down on purpose (the stack's watcher skips them)."""
        self.runs = 0
        self._thread = threading.Thread(target=self._loop, name="registry-gc", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(STOP_WAIT)

    def names(self) -> set[str]:
        return {child.name for child in self._children}

    def _loop(self) -> None:
        while not self._stopping.wait(self._interval):
            try:
                if self._busy():
                    log.info("garbage collection postponed: a save or launch is under way")
                    continue
                self.collect()
            except Exception:
                log.exception("garbage collection failed (tried again next time)")

    def collect(self) -> str:
        """One run; returns the collector's summary line."""
        with self._lock:
            self.paused = True
            try:
                for child in self._children:
                    child.stop(self._grace)
                done = subprocess.run(registry.garbage_collect_argv(self._program, self._config),
                                      capture_output=True, text=True, timeout=COLLECT_TIMEOUT,
                                      check=False)
                if done.returncode != 0:
                    log.error("garbage-collect exited %d: %s", done.returncode,
                              done.stderr.strip()[-2000:])
            finally:
                if not self._stopping.is_set():
                    for child in self._children:
                        child.start()
                    deadline = time.monotonic() + READY_TIMEOUT
                    while not self._ready() and time.monotonic() < deadline:
                        time.sleep(0.05)
                self.paused = False
        lines = [line for line in done.stdout.splitlines() if line.strip()]
        summary = lines[-1] if lines else "nothing to collect"
        self.runs += 1
        log.info("garbage collection %d: %s", self.runs, summary)
        return summary
