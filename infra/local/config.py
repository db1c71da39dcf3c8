"""The local stack's one configuration object, read once from the environment at start-up.

=============================  =================================================  ==============
variable                       meaning                                            default
=============================  =================================================  ==============
``DIT4C_DATA_DIR``             where all state lives (made 0700)                  ``.dit4c``
``DIT4C_ADMIN_PASSWORD``       the ``admin`` account's password                   generated once,
                                                                                  kept in the
                                                                                  data directory
``DIT4C_PORTAL_PORT``          control plane (portal + API) port                  8000
``DIT4C_ROUTER_PORT``          edge router port                                   8080
``DIT4C_AWS_PORT``             moto's port (loopback only); 0 picks a free one.   8001
                               Keep it fixed: queue URLs saved in the data
                               carry it
``DIT4C_REGISTRY_PORT``        image server's port (loopback and pods gateway),   5001
                               when Debian's ``docker-registry`` is installed
``DIT4C_EXPORT_PORT``          image exporter's port (loopback; export links)     5002
``DIT4C_REGISTRY_GC_SECONDS``  seconds between the image server's garbage         3600
                               collections (frees deleted images' layers)
``DIT4C_PUBLISH_HELPERS``      ``1``: push the helpers image (``DIT4C_NODE_       ``1``
                               HELPERS_IMAGE``, else ``dit4c/helpers:dev``) to
                               the image server at start as
                               ``dit4c/helpers:<version>``; the portal names it,
                               pinned by digest, to nodes that join (``0``: off)
``DIT4C_STACK_NAME``           prefix of every table, queue, topic and bucket     ``dit4c-local``
``DIT4C_NODE_PODS_NETWORK``    the pods' bridge network (shared with the node     ``dit4c-pods``
                               daemon, which reads the same variable)
``DIT4C_NODE_LABELS``          ``k=v,...`` labels on the Docker objects made      none
                               (the node daemon reads it too; tests use it)
``DIT4C_SNAPSHOT_SECONDS``     how often the journal's size is checked            30
``DIT4C_JOURNAL_BYTES``        a journal this large is compacted into a new       1048576
                               snapshot (at the next check)
``DIT4C_JOURNAL_SYNC``         ``always``: each change is on disk (fdatasync)     ``always``
                               before its answer leaves, and survives a power
                               cut; ``never``: it survives a killed stack, and
                               the kernel writes it to disk within ~30 s
``DIT4C_SCHEDULE_SECONDS``     run the template's scheduled functions (the        their
                               reaper) this often instead (tests)                 ``rate()``
``DIT4C_READY_TIMEOUT``        seconds to wait for every part to be ready         120
``DIT4C_STOP_GRACE``           seconds a child gets after SIGTERM before SIGKILL  4
=============================  =================================================  ==============

A bad value fails at once with a :class:`ConfigError` naming the variable.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from infra.local.errors import ConfigError
from protocol.pod import PODS_NETWORK
from scripts import images

_STACK_NAME = re.compile(r"^[a-z][a-z0-9-]{0,30}$")


@dataclass(frozen=True, kw_only=True)
class LocalConfig:
    data_dir: Path
    admin_password: str | None = None
    portal_port: int = 8000
    router_port: int = 8080
    aws_port: int = 8001
    registry_port: int = 5001
    export_port: int = 5002
    registry_gc_seconds: float = 3600.0
    publish_helpers: str | None = None
    """The helpers image to publish on the image server at start (None: do not)."""
    stack_name: str = "dit4c-local"
    pods_network: str = PODS_NETWORK
    docker_labels: Mapping[str, str] = field(default_factory=dict)
    snapshot_seconds: float = 30.0
    journal_bytes: int = 1 << 20
    journal_sync: bool = True
    schedule_seconds: float | None = None
    """Overrides every ``rate(...)`` of the template's schedules when set."""
    ready_timeout: float = 120.0
    stop_grace: float = 4.0
    public_host: str = "localhost"
    """How browsers reach this machine: ``localhost`` (and ``*.localhost`` for instances)."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> LocalConfig:
        source = os.environ if env is None else env

        def get(name: str) -> str | None:
            value = source.get(name, "").strip()
            return value or None

        def port(name: str, default: int, allow_zero: bool = False) -> int:
            text = get(name)
            if text is None:
                return default
            if not text.isdigit() or int(text) > 65535 or (int(text) == 0 and not allow_zero):
                raise ConfigError(f"{name} must be a port number (1-65535), not {text!r}")
            return int(text)

        def seconds(name: str, default: float) -> float:
            text = get(name)
            if text is None:
                return default
            try:
                value = float(text)
            except ValueError:
                raise ConfigError(f"{name} must be a number of seconds, not {text!r}") from None
            if value <= 0:
                raise ConfigError(f"{name} must be positive, not {text!r}")
            return value

        def count(name: str, default: int) -> int:
            text = get(name)
            if text is None:
                return default
            if not text.isdigit() or int(text) == 0:
                raise ConfigError(f"{name} must be a positive whole number, not {text!r}")
            return int(text)

        journal_sync = get("DIT4C_JOURNAL_SYNC") or "always"
        if journal_sync not in ("always", "never"):
            raise ConfigError(f"DIT4C_JOURNAL_SYNC must be 'always' or 'never', not "
                              f"{journal_sync!r}")

        stack_name = get("DIT4C_STACK_NAME") or "dit4c-local"
        if not _STACK_NAME.match(stack_name):
            raise ConfigError(
                f"DIT4C_STACK_NAME must be lower-case letters, digits and '-', starting with a "
                f"letter, at most 31 characters, not {stack_name!r}"
            )
        password = source.get("DIT4C_ADMIN_PASSWORD") or None
        if password is not None and len(password) < 8:
            raise ConfigError("DIT4C_ADMIN_PASSWORD must be at least 8 characters")
        portal_port = port("DIT4C_PORTAL_PORT", 8000)
        router_port = port("DIT4C_ROUTER_PORT", 8080)
        registry_port = port("DIT4C_REGISTRY_PORT", 5001)
        export_port = port("DIT4C_EXPORT_PORT", 5002)
        if len({portal_port, router_port, registry_port, export_port}) < 4:
            raise ConfigError(
                "DIT4C_PORTAL_PORT, DIT4C_ROUTER_PORT, DIT4C_REGISTRY_PORT and "
                "DIT4C_EXPORT_PORT must differ"
            )
        publish = get("DIT4C_PUBLISH_HELPERS") or "1"
        if publish not in ("0", "1"):
            raise ConfigError(f"DIT4C_PUBLISH_HELPERS must be 0 or 1, not {publish!r}")
        return cls(
            publish_helpers=(get("DIT4C_NODE_HELPERS_IMAGE") or images.HELPERS)
            if publish == "1" else None,
            data_dir=Path(get("DIT4C_DATA_DIR") or ".dit4c").absolute(),
            admin_password=password,
            portal_port=portal_port,
            router_port=router_port,
            aws_port=port("DIT4C_AWS_PORT", 8001, allow_zero=True),
            registry_port=registry_port,
            export_port=export_port,
            registry_gc_seconds=seconds("DIT4C_REGISTRY_GC_SECONDS", 3600.0),
            stack_name=stack_name,
            pods_network=get("DIT4C_NODE_PODS_NETWORK") or PODS_NETWORK,
            docker_labels=parse_labels(get("DIT4C_NODE_LABELS") or ""),
            snapshot_seconds=seconds("DIT4C_SNAPSHOT_SECONDS", 30.0),
            journal_bytes=count("DIT4C_JOURNAL_BYTES", 1 << 20),
            journal_sync=journal_sync == "always",
            schedule_seconds=seconds("DIT4C_SCHEDULE_SECONDS", 0.0) or None,
            ready_timeout=seconds("DIT4C_READY_TIMEOUT", 120.0),
            stop_grace=seconds("DIT4C_STOP_GRACE", 4.0),
        )

    # -- URLs derived from the ports ---------------------------------------------------------

    @property
    def portal_url(self) -> str:
        """The portal as browsers on this machine reach it."""
        return f"http://{self.public_host}:{self.portal_port}"

    @property
    def local_portal_url(self) -> str:
        """The portal as processes on this machine reach it (no name lookup)."""
        return f"http://127.0.0.1:{self.portal_port}"

    @property
    def export_url(self) -> str:
        """The image exporter as browsers on this machine reach it (export links)."""
        return f"http://{self.public_host}:{self.export_port}"

    # Pods reach the portal and the router at the pods bridge's gateway address, not as
    # host.docker.internal: that name is each node's own gateway, and the pods of a node on
    # another engine of this machine (a "home" node in the tests) must reach this stack's.

    def pod_portal_url(self, gateway: str) -> str:
        return f"http://{gateway}:{self.portal_port}"

    def pod_tunnel_url(self, gateway: str) -> str:
        return f"ws://{gateway}:{self.router_port}/.dit4c/tunnel"


def parse_labels(text: str) -> dict[str, str]:
    """``k=v,k2=v2`` -> dict (the node daemon's DIT4C_NODE_LABELS format)."""
    labels = {}
    for pair in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"DIT4C_NODE_LABELS: {pair!r} is not key=value")
        labels[key] = value
    return labels
