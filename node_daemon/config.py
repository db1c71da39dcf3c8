"""The node's saved identity and its run settings.

``join`` writes two files into the data directory (mode 0700, files 0600):

- ``node.json`` — :class:`NodeIdentity`: who this node is and where its queues are.
- ``node-key.pem`` — the node's private signing key (it never leaves the machine).

``run`` reads them back and takes :class:`RunSettings` from, in order of precedence: command-line
flags, then ``DIT4C_NODE_*`` environment variables, then the defaults below. A missing or bad
setting raises :class:`ConfigError` naming it, before anything starts.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from node_daemon.egress import EgressPolicy
from node_daemon.errors import ConfigError
from node_daemon.files import ensure_private_dir, write_atomic
from protocol import pod
from protocol.errors import TokenError
from protocol.pod import PODS_NETWORK
from protocol.tokens import SigningKey

IDENTITY_FILE = "node.json"
KEY_FILE = "node-key.pem"
RECORDS_DIR = "instances"
METRICS_ADDRESS_FILE = "metrics-address"
"""Written by ``run`` once the metrics server listens: ``host:port`` (useful with port 0)."""

DEFAULT_HELPERS_IMAGE = "dit4c/helpers:dev"
DEFAULT_HELPER_COMMANDS: Mapping[str, Sequence[str]] = {
    role: ("python3", "-m", f"helpers.{role}")
    for role in (pod.ROLE_LISTENER, pod.ROLE_STORAGE)
}
DEFAULT_METRICS_LISTEN = "127.0.0.1:9464"
DEFAULT_TOKEN_CHECK_SECONDS = 60.0
DEFAULT_HEARTBEAT_SECONDS = 240.0
"""Every 4 minutes: a heartbeat is an SQS message, a Lambda run and a DynamoDB write, so its
rate is most of what an idle node costs (docs/deploy.md, cost model). The control plane counts a
node silent after 600 s (``DIT4C_NODE_SILENT_SECONDS``): two heartbeats missed, and a bit."""
DEFAULT_RECONCILE_SECONDS = 60.0
DEFAULT_POLL_WAIT_SECONDS = 20
DEFAULT_LAUNCH_TIMEOUT_SECONDS = 300.0
MAX_SANDBOXES = 16
"""Each free sandbox holds about 40 MB; more than a few only helps bursts of launches."""
DEFAULT_REPORT_AGAIN_SECONDS = 60.0
DEFAULT_STORAGE_SECONDS = 15.0


def default_data_dir() -> Path:
    env = os.environ.get("DIT4C_NODE_DATA_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "dit4c-node"


@dataclass(frozen=True)
class NodeIdentity:
    """What enrolment returned, plus what the node declared about itself."""

    node_id: str
    cluster_id: str
    portal_url: str
    queue_url: str
    events_queue_url: str
    name: str
    cpu: float
    memory_mb: int
    helpers_image: str | None = None
    """The helpers image the portal named at enrolment (pinned by digest), if it publishes one."""

    def save(self, data_dir: Path, key: SigningKey) -> None:
        ensure_private_dir(data_dir)
        # Key first: an identity file without its key would be a node that cannot prove itself.
        write_atomic(data_dir / KEY_FILE, key.to_pem().encode())
        write_atomic(data_dir / IDENTITY_FILE, json.dumps(asdict(self), indent=2).encode())

    @classmethod
    def load(cls, data_dir: Path) -> tuple[NodeIdentity, SigningKey]:
        path = data_dir / IDENTITY_FILE
        try:
            raw = json.loads(path.read_text())
            # Fields with defaults may be absent: identities saved by older daemons.
            identity = cls(**{k: raw[k] for k in cls.__dataclass_fields__ if k in raw})
            key = SigningKey.from_pem((data_dir / KEY_FILE).read_bytes())
        except FileNotFoundError as exc:
            raise ConfigError(
                f"{exc.filename} not found: run `dit4c-node join --portal URL "
                f"--token TOKEN --data-dir {data_dir}` first") from None
        except (ValueError, KeyError, TypeError, TokenError) as exc:
            raise ConfigError(f"{path} or its key is unreadable: {exc!r}") from None
        return identity, key


def parse_labels(text: str) -> dict[str, str]:
    """``k=v,k2=v2`` -> dict; a pair without ``=`` is a ConfigError."""
    labels: dict[str, str] = {}
    for pair in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"label {pair!r} is not key=value (DIT4C_NODE_LABELS / --label)")
        labels[key] = value
    return labels


def parse_helper_commands(text: str) -> dict[str, list[str]]:
    """``{"listener": ["python3", "-m", "mysite.listener"]}`` -> dict; anything else fails."""
    if not text.strip():
        return {}
    try:
        raw = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"DIT4C_NODE_HELPER_COMMANDS is not JSON: {exc}") from None
    if not isinstance(raw, dict) or not all(
            isinstance(k, str) and k in DEFAULT_HELPER_COMMANDS and isinstance(v, list) and v
            and all(isinstance(a, str) for a in v) for k, v in raw.items()):
        raise ConfigError("DIT4C_NODE_HELPER_COMMANDS must map helper roles "
                          f"({', '.join(DEFAULT_HELPER_COMMANDS)}) to non-empty argv lists")
    return {k: list(v) for k, v in raw.items()}


def parse_listen(text: str, setting: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"{setting} must be host:port, got {text!r}")
    return host, int(port)


@dataclass(frozen=True)
class RunSettings:
    data_dir: Path
    pods_network: str = PODS_NETWORK
    labels: Mapping[str, str] = field(default_factory=dict)
    """Extra labels on every container, volume and network the daemon makes (tests use them)."""
    helpers_image: str | None = None
    """Given by flag or environment; else the identity's (the portal's), else
    :data:`DEFAULT_HELPERS_IMAGE` (see :meth:`helpers_for`)."""
    metrics_listen: tuple[str, int] = ("127.0.0.1", 9464)
    heartbeat_seconds: float = DEFAULT_HEARTBEAT_SECONDS
    reconcile_seconds: float = DEFAULT_RECONCILE_SECONDS
    report_again_seconds: float = DEFAULT_REPORT_AGAIN_SECONDS
    """A state the portal has not taken this long after this node reported it is reported
    again (the first report was lost)."""
    poll_wait_seconds: int = DEFAULT_POLL_WAIT_SECONDS
    launch_timeout_seconds: float = DEFAULT_LAUNCH_TIMEOUT_SECONDS
    egress: EgressPolicy = field(default_factory=EgressPolicy)
    """What pods may reach (``DIT4C_NODE_EGRESS``, ``DIT4C_NODE_POD_HOST_PORTS``,
    ``DIT4C_NODE_POD_LAN``): :mod:`node_daemon.egress`."""
    token_check_seconds: float = DEFAULT_TOKEN_CHECK_SECONDS
    """How often the tunnel tokens of running instances are looked at (renewed at half-life)."""
    storage_seconds: float = DEFAULT_STORAGE_SECONDS
    """How often the storage helpers are looked at (renewals, health reports)."""
    helper_commands: Mapping[str, Sequence[str]] = field(
        default_factory=lambda: dict(DEFAULT_HELPER_COMMANDS))
    """argv of each helper role; ``DIT4C_NODE_HELPER_COMMANDS`` (JSON object) overrides some,
    e.g. to run a site's own build of a helper."""
    sandboxes: int = 0
    """Free pod sandboxes (namespace holder + listener + storage helper, ready to bind) the
    node keeps (``DIT4C_NODE_SANDBOXES``): a launch that finds one skips their starts; 0 makes
    each launch make its own (:mod:`node_daemon.sandboxes`)."""
    sandbox_storage: bool = True
    """Free sandboxes have a storage helper ready (``DIT4C_NODE_SANDBOX_STORAGE``, ``on`` or
    ``off``): ``off`` saves an idle helper's memory per free sandbox on nodes whose instances
    have no storage; a launch with storage then adds one to its sandbox."""
    upload_compression: str = "gzip"
    """How the upload helper sends new layers: ``gzip`` (level 1: half the bytes of typical
    data, for nodes on slow uplinks) or ``none`` (fastest on a fast network)."""

    def helpers_for(self, identity: NodeIdentity) -> str:
        """The helpers image this node runs: flag or environment, then what the portal named
        at enrolment, then the local build's name."""
        return self.helpers_image or identity.helpers_image or DEFAULT_HELPERS_IMAGE

    @classmethod
    def from_sources(cls, flags: Mapping[str, Any], env: Mapping[str, str]) -> RunSettings:
        """Flags (None = not given) over ``DIT4C_NODE_*`` env over defaults."""

        def pick(flag: str, var: str, default: str) -> str:
            value = flags.get(flag)
            return str(value) if value is not None else env.get(var, default)

        def number(flag: str, var: str, default: float) -> float:
            text = pick(flag, var, str(default))
            try:
                value = float(text)
            except ValueError:
                raise ConfigError(f"{var} (--{flag.replace('_', '-')}) must be a number, "
                                  f"got {text!r}") from None
            if value <= 0:
                raise ConfigError(f"{var} must be positive, got {text!r}")
            return value

        data_dir = Path(pick("data_dir", "DIT4C_NODE_DATA_DIR", str(default_data_dir())))
        labels = parse_labels(env.get("DIT4C_NODE_LABELS", ""))
        for pair in flags.get("label") or ():
            labels.update(parse_labels(pair))
        poll_wait = number("poll_wait", "DIT4C_NODE_POLL_WAIT_SECONDS",
                           DEFAULT_POLL_WAIT_SECONDS)
        if poll_wait > 20:
            raise ConfigError("DIT4C_NODE_POLL_WAIT_SECONDS is at most 20 (SQS's limit)")
        compression = env.get("DIT4C_NODE_UPLOAD_COMPRESSION", "gzip")
        if compression not in ("gzip", "none"):
            raise ConfigError(f"DIT4C_NODE_UPLOAD_COMPRESSION must be gzip or none, "
                              f"got {compression!r}")
        sandboxes = env.get("DIT4C_NODE_SANDBOXES", "0").strip()
        if not sandboxes.isdigit() or int(sandboxes) > MAX_SANDBOXES:
            raise ConfigError(f"DIT4C_NODE_SANDBOXES must be a whole number from 0 to "
                              f"{MAX_SANDBOXES}, got {sandboxes!r}")
        sandbox_storage = env.get("DIT4C_NODE_SANDBOX_STORAGE", "on").strip()
        if sandbox_storage not in ("on", "off"):
            raise ConfigError(f"DIT4C_NODE_SANDBOX_STORAGE must be on or off, "
                              f"got {sandbox_storage!r}")
        return cls(
            data_dir=data_dir,
            pods_network=pick("pods_network", "DIT4C_NODE_PODS_NETWORK", PODS_NETWORK),
            labels=labels,
            helpers_image=pick("helpers_image", "DIT4C_NODE_HELPERS_IMAGE", "") or None,
            metrics_listen=parse_listen(
                pick("metrics_listen", "DIT4C_NODE_METRICS_LISTEN", DEFAULT_METRICS_LISTEN),
                "DIT4C_NODE_METRICS_LISTEN (--metrics-listen)"),
            heartbeat_seconds=number("heartbeat_seconds", "DIT4C_NODE_HEARTBEAT_SECONDS",
                                     DEFAULT_HEARTBEAT_SECONDS),
            reconcile_seconds=number("reconcile_seconds", "DIT4C_NODE_RECONCILE_SECONDS",
                                     DEFAULT_RECONCILE_SECONDS),
            report_again_seconds=number("report_again_seconds",
                                        "DIT4C_NODE_REPORT_AGAIN_SECONDS",
                                        DEFAULT_REPORT_AGAIN_SECONDS),
            poll_wait_seconds=int(poll_wait),
            launch_timeout_seconds=number("launch_timeout", "DIT4C_NODE_LAUNCH_TIMEOUT_SECONDS",
                                          DEFAULT_LAUNCH_TIMEOUT_SECONDS),
            egress=EgressPolicy.parse(env.get("DIT4C_NODE_EGRESS", "enforce").strip(),
                                      env.get("DIT4C_NODE_POD_HOST_PORTS", ""),
                                      env.get("DIT4C_NODE_POD_LAN", "")),
            token_check_seconds=number("token_check_seconds",
                                       "DIT4C_NODE_TOKEN_CHECK_SECONDS",
                                       DEFAULT_TOKEN_CHECK_SECONDS),
            storage_seconds=number("storage_seconds", "DIT4C_NODE_STORAGE_SECONDS",
                                   DEFAULT_STORAGE_SECONDS),
            helper_commands={**DEFAULT_HELPER_COMMANDS,
                             **parse_helper_commands(env.get("DIT4C_NODE_HELPER_COMMANDS", ""))},
            upload_compression=compression,
            sandboxes=int(sandboxes),
            sandbox_storage=sandbox_storage == "on",
        )
