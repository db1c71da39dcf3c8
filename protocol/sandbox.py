"""Binding a ready pod sandbox to an instance (contract between the node daemon and the listener).

A sandbox is a pod's namespace holder and listener made before any instance needs them: the
listener starts with :data:`ENV_SANDBOX` set and none of an instance's settings, imports and
warms up, and waits on its standard input. At launch the node daemon attaches to the listener
container (stdin and stdout; no TTY, so Docker multiplexes stdout) and writes one line, a
*bind*: the listener's settings exactly as :mod:`protocol.pod` names them (what the listener
would otherwise find in its environment), as a JSON object of strings. The listener answers on
its standard output, one JSON object per line::

    {"bound": "<instance id>"}   the settings are taken, the auth gate listens, the tunnels
                                 are being dialled
    {"ready": "<instance id>"}   the tool answers HTTP on its port (the listener probes it from
                                 inside the pod): the instance can be called running
    {"error": "<reason>"}        the bind is refused (bad settings; bound to another instance)

A bind repeated for the same instance is answered again (``bound``, then ``ready`` as soon as
the tool answers, at once if it already did): a node daemon restarted in the middle of a launch
binds again. A listener bound to one instance refuses every other (so a sandbox that was ever
bound can never serve a second instance, whatever the node's bookkeeping says).

Readiness is pushed: the node waits on the attached stdout, no probe process is started in the
pod. The secrets in a bind travel only over the Docker API socket and stay in the listener's
memory: they are in no container's configuration (``docker inspect``) and in no log.

**The storage helper** of a sandbox is bound the same way: started with :data:`ENV_SANDBOX` and
no ``protocol.pod.ENV_STORAGE``, it mounts the user's (not yet known) storage, imports its file
server and waits; its bind is ``{"bind": {"DIT4C_STORAGE": "<StorageAccess as JSON>"}}`` and
its answers carry where the storage is (``s3://bucket/prefix``): ``bound`` once the settings are
taken, ``ready`` once the store accepted the credentials and the mount serves (the tool may
start), ``error`` with the store's refusal (the helper then exits). A later bind of the same
bucket and prefix hands over renewed credentials and quota (answered ``bound``, and ``ready``
once serving); a bind of other storage is refused.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Final

from protocol.errors import MessageError

ENV_SANDBOX: Final = "DIT4C_SANDBOX"
"""Set on a pooled listener (its sandbox id): wait for a bind on stdin instead of reading an
instance's settings from the environment."""

MAX_LINE: Final = 64 * 1024
"""A bind is a few KiB; anything longer is refused (the listener reads no further)."""

BOUND: Final = "bound"
READY: Final = "ready"
ERROR: Final = "error"
ANSWERS: Final = frozenset({BOUND, READY, ERROR})

PROBE_INTERVAL: Final = 0.02
"""How often the listener tries the tool's port until it answers (a refused connect on
loopback costs microseconds)."""


def bind_line(settings: Mapping[str, str]) -> bytes:
    """The line the node writes: the listener's settings (``protocol.pod`` names)."""
    return json.dumps({"bind": dict(settings)}, separators=(",", ":")).encode() + b"\n"


def parse_bind(line: bytes) -> dict[str, str]:
    """The settings of one bind line; MessageError if it is not one."""
    if len(line) > MAX_LINE:
        raise MessageError("bind line too long")
    try:
        raw = json.loads(line)
    except ValueError as exc:
        raise MessageError(f"bind line is not JSON: {exc}") from None
    settings = raw.get("bind") if isinstance(raw, dict) else None
    if not isinstance(settings, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in settings.items()):
        raise MessageError('a bind line is {"bind": {name: value, ...}} with string values')
    return settings


def answer_line(kind: str, value: str) -> bytes:
    if kind not in ANSWERS:
        raise ValueError(f"unknown answer {kind!r}")
    return json.dumps({kind: value}, separators=(",", ":")).encode() + b"\n"


def parse_answer(line: bytes) -> tuple[str, str] | None:
    """``(kind, value)`` of an answer line; None for any other output (the listener's stdout
    carries nothing else, but a stray line must not break a launch)."""
    try:
        raw = json.loads(line)
    except ValueError:
        return None
    if isinstance(raw, dict) and len(raw) == 1:
        ((kind, value),) = raw.items()
        if kind in ANSWERS and isinstance(value, str):
            return kind, value
    return None
