"""Child processes of the local stack (edge router, node daemon): start, watch, stop.

Each child runs in its own process group, so a Ctrl-C in the terminal reaches only the stack,
which then stops its children in order: SIGTERM to the group, SIGKILL after a grace period.
Output goes to ``logs/<name>.log`` in the data directory; when a child dies unexpectedly the
stack reports the end of that log. ``run/<name>.pid`` records a running child, so that the next
start finds and stops what a killed stack (SIGKILL, power loss) left behind.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

log = logging.getLogger("dit4c.local.children")

TAIL_LINES = 30


class Child:
    """One child process; see the module docstring."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str],
        *,
        log_dir: Path,
        run_dir: Path,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self._env = dict(env)
        self.log_path = log_dir / f"{name}.log"
        self._pid_path = run_dir / f"{name}.pid"
        self._cwd = cwd
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self) -> None:
        with open(self.log_path, "ab") as output:
            # Not the argv: it may hold a secret (the node's join token).
            output.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} start {self.name}\n".encode())
            output.flush()
            self._process = subprocess.Popen(
                self.argv, env=self._env, cwd=self._cwd, stdin=subprocess.DEVNULL,
                stdout=output, stderr=subprocess.STDOUT, process_group=0,
            )
        self._pid_path.write_text(json.dumps({"pid": self._process.pid, "argv": self.argv}))
        log.info("started %s (pid %d), log %s", self.name, self._process.pid, self.log_path)

    def poll(self) -> int | None:
        """The exit code once it has exited, else None."""
        return self._process.poll() if self._process is not None else None

    def wait(self, timeout: float) -> int:
        if self._process is None:
            raise RuntimeError(f"{self.name} was never started")
        code = self._process.wait(timeout)
        self._forget()
        return code

    def terminate(self) -> None:
        """SIGTERM the process group, without waiting (``stop`` waits)."""
        if self._process is not None and self._process.poll() is None:
            _signal_group(self._process.pid, signal.SIGTERM)

    def stop(self, grace: float) -> int | None:
        """SIGTERM the process group, SIGKILL after ``grace`` seconds; returns the exit code."""
        process = self._process
        if process is None:
            return None
        if process.poll() is None:
            _signal_group(process.pid, signal.SIGTERM)
            try:
                process.wait(grace)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within %.0f s of SIGTERM: killing it", self.name,
                            grace)
                _signal_group(process.pid, signal.SIGKILL)
                process.wait(5)
        # Whatever it started in its group goes too (it may have exited before its children).
        _signal_group(process.pid, signal.SIGKILL)
        self._forget()
        return process.returncode

    def tail(self, lines: int = TAIL_LINES) -> str:
        try:
            text = self.log_path.read_bytes()[-64 * 1024:].decode(errors="replace")
        except OSError as exc:
            return f"(cannot read {self.log_path}: {exc})"
        return "\n".join(text.splitlines()[-lines:])

    def _forget(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._pid_path.unlink()


def stop_leftovers(run_dir: Path) -> list[str]:
    """Stop children that a killed stack left running (their pid files are still there).

    A pid is only signalled when the process still runs the recorded command line, so a
    recycled pid belonging to something else is never touched. Returns what was stopped.
    """
    stopped = []
    for pid_path in sorted(run_dir.glob("*.pid")):
        try:
            record = json.loads(pid_path.read_text())
            pid, argv = int(record["pid"]), list(record["argv"])
        except (OSError, ValueError, KeyError, TypeError):
            log.warning("ignoring unreadable %s", pid_path)
            pid_path.unlink(missing_ok=True)
            continue
        if _command_line(pid) == argv:
            log.warning("stopping %s (pid %d) left over by an earlier run", pid_path.stem, pid)
            _signal_group(pid, signal.SIGTERM)
            deadline = time.monotonic() + 5
            while _command_line(pid) == argv and time.monotonic() < deadline:
                time.sleep(0.1)
            _signal_group(pid, signal.SIGKILL)
            stopped.append(pid_path.stem)
        pid_path.unlink(missing_ok=True)
    return stopped


def _command_line(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part] or None


def _signal_group(pid: int, sig: signal.Signals) -> None:
    # The child leads its own group (process_group=0): its pid is the group id.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
