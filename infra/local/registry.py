"""The image server: Debian's ``docker-registry`` (CNCF Distribution) on loopback, when installed.

It stores images under ``<data dir>/registry/data``, so saved images survive restarts like the
rest of the data. It listens on ``127.0.0.1`` only: the local Docker engine may push and pull
(Docker trusts registries on 127.0.0.0/8 without TLS), pods and other machines cannot reach it.
It runs without authentication until the portal serves the registry token endpoint
(``/registry/token``); loopback-only is what makes that acceptable on a one-person machine.
"""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path

import yaml

BINARY = "docker-registry"


def binary() -> str | None:
    """The registry program, or None when it is not installed (the image server is optional)."""
    return shutil.which(BINARY)


def write_config(directory: Path, port: int) -> Path:
    """Write ``config.yml`` (0600) for a registry on ``127.0.0.1:port`` storing under
    ``directory/data``; returns its path. The upload-state secret is made once and kept."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    secret_path = directory / "http-secret"
    if not secret_path.exists():
        _write_private(secret_path, secrets.token_urlsafe(32))
    config = {
        "version": 0.1,
        "log": {"level": "info", "formatter": "text", "accesslog": {"disabled": False}},
        "storage": {
            "filesystem": {"rootdirectory": str(directory / "data")},
            "delete": {"enabled": True},
            "cache": {"blobdescriptor": "inmemory"},
        },
        "http": {
            "addr": f"127.0.0.1:{port}",
            "secret": secret_path.read_text().strip(),
            "headers": {"X-Content-Type-Options": ["nosniff"]},
        },
        "health": {"storagedriver": {"enabled": True, "interval": "10s", "threshold": 3}},
    }
    path = directory / "config.yml"
    _write_private(path, yaml.safe_dump(config, sort_keys=False))
    return path


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
