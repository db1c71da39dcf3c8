"""The data directory: everything the local stack keeps between runs, and its lock.

::

    <data dir>/            (0700)
      lock                 held (flock) while a stack runs; holds that stack's pid
      admin-password       the generated admin password (0600), when DIT4C_ADMIN_PASSWORD is unset
      aws/                 snapshot of moto's state (infra.local.snapshot)
      node/                the node daemon's own data directory (identity, key, instance records)
      logs/                one log per child process, and the portal's access log
      run/                 <child>.pid while it runs: leftovers of a killed stack are found here
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from infra.local.errors import ConfigError

PASSWORD_FILE = "admin-password"  # noqa: S105 - a file name


@dataclass(frozen=True)
class AdminPassword:
    value: str
    source: str
    """Where it came from, as printed in the ready block."""


class DataDir:
    """Paths inside the data directory, its lock, and the admin password kept there."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock: IO[str] | None = None

    @property
    def aws(self) -> Path:
        return self.root / "aws"

    @property
    def node(self) -> Path:
        return self.root / "node"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def run(self) -> Path:
        return self.root / "run"

    def prepare(self) -> None:
        """Make the directories (owner-only), or fail naming the path."""
        try:
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(self.root, 0o700)
            for path in (self.aws, self.logs, self.run):
                path.mkdir(mode=0o700, exist_ok=True)
                os.chmod(path, 0o700)
        except OSError as exc:
            raise ConfigError(f"cannot use data directory {self.root} (DIT4C_DATA_DIR): {exc}") \
                from exc

    def lock(self) -> None:
        """Hold the data directory for this process; a second stack on it is refused."""
        fd = os.open(self.root / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        handle = os.fdopen(fd, "r+", encoding="utf-8")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise ConfigError(
                f"{self.root} is in use by a running local stack (pid {holder}); stop it first "
                "or set DIT4C_DATA_DIR to another directory"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._lock = handle

    def unlock(self) -> None:
        if self._lock is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None

    def admin_password(self, given: str | None) -> AdminPassword:
        """The given password, else the one generated earlier, else a new one (stored 0600)."""
        if given is not None:
            return AdminPassword(given, "from DIT4C_ADMIN_PASSWORD")
        path = self.root / PASSWORD_FILE
        where = shown(path)
        try:
            stored = path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            stored = ""
        if stored:
            return AdminPassword(stored, f"generated, kept in {where}")
        password = secrets.token_urlsafe(12)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(password + "\n")
        return AdminPassword(password, f"generated, kept in {where}")


def shown(path: Path) -> str:
    """The path relative to the working directory when inside it (as the README shows it)."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)
