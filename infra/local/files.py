"""Writing files so that they survive a killed process and a power cut, and setting damaged
ones aside (never deleting them)."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path


def write_synced(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` and wait until it is on disk."""
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` all at once: a reader sees the old file or the new one."""
    tmp = path.with_name(path.name + ".tmp")
    write_synced(tmp, data)
    os.replace(tmp, path)


def sync_directory(directory: Path) -> None:
    """Make a name created, renamed or removed in ``directory`` survive a power cut."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def aside_name(path: Path, stamp: str | None = None) -> Path:
    """Where a damaged ``path`` is kept: ``<name>.damaged-<UTC time>`` beside it."""
    stamp = stamp or datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return path.with_name(f"{path.name}.damaged-{stamp}")


def set_aside(path: Path) -> Path:
    """Move a damaged file out of the way, beside where it was; returns where it went."""
    aside = aside_name(path)
    os.replace(path, aside)
    sync_directory(path.parent)
    return aside
