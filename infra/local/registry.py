"""The image server: Debian's ``docker-registry`` (CNCF Distribution 2.8), token authentication.

It stores images under ``<data dir>/registry/data``, so saved images survive restarts like the
rest of the data. Every request needs a token signed by the portal (``GET /registry/token``;
``auth: token`` below): ``issuer`` is the portal URL the control plane puts in ``iss``,
``service`` its ``DIT4C_REGISTRY_SERVICE``, and ``rootcertbundle`` the certificate of the
registry CA kept with the portal's signing keys (``control_plane/keys.py``), so signing keys
rotate without the registry noticing.

Two processes serve the same storage (same ``http.secret``, so an upload may cross them), one
per address, since Distribution listens on one: ``127.0.0.1:<port>`` for the Docker engines of
this machine (Docker trusts ``127.0.0.0/8`` without TLS, so image references name this one),
and ``<pods gateway>:<port>`` for pods (the upload helper pushes as
``host.docker.internal:<port>``). Never ``0.0.0.0``.

Deleting a manifest frees nothing by itself: :func:`garbage_collect_argv` is the registry's
offline collector, run by the stack on a schedule with both processes stopped
(``infra/local/stack.py``).
"""

from __future__ import annotations

import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

import yaml

BINARY = "docker-registry"
BUNDLE = "token-ca.pem"


@dataclass(frozen=True)
class TokenAuth:
    """What the registry needs to verify the portal's tokens."""

    realm: str
    """The portal's token endpoint as clients reach it (``<portal>/registry/token``)."""
    service: str
    issuer: str
    ca_pem: str


def binary() -> str | None:
    """The registry program, or None when it is not installed (the image server is optional)."""
    return shutil.which(BINARY)


def write_config(directory: Path, address: str, auth: TokenAuth,
                 name: str = "config.yml") -> Path:
    """Write ``name`` (0600) for a registry listening on ``address`` (``host:port``) and storing
    under ``directory/data``, with the CA bundle beside it; returns its path. The upload-state
    secret is made once and kept (every process serving this storage shares it)."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    secret_path = directory / "http-secret"
    if not secret_path.exists():
        _write_private(secret_path, secrets.token_urlsafe(32))
    bundle = directory / BUNDLE
    _write_private(bundle, auth.ca_pem)
    config = {
        "version": 0.1,
        "log": {"level": "info", "formatter": "text", "accesslog": {"disabled": False}},
        "storage": {
            "filesystem": {"rootdirectory": str(directory / "data")},
            "delete": {"enabled": True},
        },
        "http": {
            "addr": address,
            "secret": secret_path.read_text().strip(),
            "headers": {"X-Content-Type-Options": ["nosniff"]},
        },
        "auth": {"token": {"realm": auth.realm, "service": auth.service,
                           "issuer": auth.issuer, "rootcertbundle": str(bundle)}},
        "health": {"storagedriver": {"enabled": True, "interval": "10s", "threshold": 3}},
    }
    path = directory / name
    _write_private(path, yaml.safe_dump(config, sort_keys=False))
    return path


def garbage_collect_argv(program: str, config: Path) -> list[str]:
    """The registry's collector: blobs no manifest references, and untagged manifests, go.
    Run it only while no registry process serves the storage (it is not safe online)."""
    return [program, "garbage-collect", "--delete-untagged", str(config)]


def _write_private(path: Path, text: str) -> None:
    """Atomically: a registry process already started from these files (the other listener)
    must never read one half written."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(partial, path)
