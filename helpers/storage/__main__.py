"""``python3 -m helpers.storage [run | serve | renew | unmount]``.

- ``run`` (the container's command): as root with only ``SYS_ADMIN`` (to mount), ``SETUID``
  and ``SETGID`` (to hand over): detaches whatever a previous run left at
  ``protocol.pod.STORAGE_MOUNT``, mounts the FUSE file system there, and starts ``serve`` as
  the unprivileged ``STORAGE_UID`` with the mount's descriptor: from then on nothing the tool
  can reach runs with a capability. It passes ``serve``'s answers (:mod:`protocol.sandbox`
  lines) on to its own output, making ``STORAGE_READY_FILE`` first when ``serve`` says
  ``ready``. SIGTERM/SIGINT go on to ``serve``, which stores every changed file; then the
  mount is detached. If ``serve`` ends on its own, the mount is detached and ``run`` exits with
  its status.
- ``serve``: its settings come from the environment (``ENV_STORAGE``) or, in a pod sandbox
  (``ENV_SANDBOX`` set and no ``ENV_STORAGE``), from a bind on its standard input, read once
  everything heavy is imported (boto3, the file system) and an S3 client was made once: the
  node binds it at launch over a Docker attach, so the credentials are in no container's
  configuration. Then it checks the credentials against the store (a refusal or an
  unreachable store ends it, with the reason, before it is ready: the launch fails with it),
  serves the mount, says ``ready``, counts the usage (after ``ready``: :func:`first_count`)
  and keeps ``STORAGE_STATUS_FILE`` current. Later binds of the same storage bring renewed
  credentials and quota.
- ``renew``: writes ``ENV_STORAGE_SESSION`` (new credentials and quota from the portal) to
  ``STORAGE_SESSION_FILE``, where ``serve`` reads it; the node daemon runs it.
- ``unmount``: detaches a mount left by a helper that was killed (the node daemon's cleanup).
"""

from __future__ import annotations

import errno
import faulthandler
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from helpers.storage import fuse_server
from helpers.storage.config import ConfigError, StorageConfig, quota_of
from helpers.storage.quota import RECOUNT_SECONDS, Quota
from protocol.errors import MessageError
from protocol.pod import (
    ENV_STORAGE,
    ENV_STORAGE_SESSION,
    STORAGE_MOUNT,
    STORAGE_READY_FILE,
    STORAGE_SESSION_FILE,
    STORAGE_STATUS_FILE,
    STORAGE_UID,
)
from protocol.sandbox import (
    BOUND,
    ENV_SANDBOX,
    ERROR,
    MAX_LINE,
    READY,
    answer_line,
    parse_answer,
    parse_bind,
)

if TYPE_CHECKING:
    from helpers.storage.filesystem import StorageFS

log = logging.getLogger("dit4c.storage")

ENV_FD = "DIT4C_STORAGE_FUSE_FD"
"""How ``run`` hands the mount's descriptor to ``serve``."""
CACHE_DIR = Path("/tmp/dit4c-storage-cache")  # noqa: S108 - the helper's own container
STOP_SECONDS = 8.0
"""How long ``serve`` keeps trying to store changed files at stop (within Docker's 10 s)."""
START_ATTEMPTS = 2
CREDENTIALS_WAIT_SECONDS = 120.0
UPKEEP_SECONDS = 5.0
ERROR_SHOWN_SECONDS = 30.0
"""A failure the tool saw stays in the status this long (the node reads it now and then)."""


# -- run: the privileged part, kept small ----------------------------------------------------


def run(config: StorageConfig | None) -> int:
    del config  # checked before anything is mounted (None: bound later); serve reads it again
    target = STORAGE_MOUNT
    while fuse_server.unmount(target):  # a killed helper's mount (maybe several, stacked)
        log.info("detached a stale mount at %s", target)
    os.makedirs(target, mode=0o755, exist_ok=True)
    fd = fuse_server.mount(target, STORAGE_UID, STORAGE_UID)
    try:
        # Its standard input is ours: a pooled helper's binds go to it.
        child = subprocess.Popen(
            [sys.executable, "-m", "helpers.storage", "serve"], pass_fds=(fd,),
            env={**os.environ, ENV_FD: str(fd)}, stdout=subprocess.PIPE,
            user=STORAGE_UID, group=STORAGE_UID, extra_groups=[])
    except BaseException:
        os.close(fd)
        fuse_server.unmount(target)
        raise
    os.close(fd)  # the child's copy is the connection: when it ends, the mount is dead

    def forward(signum: int, _frame: Any) -> None:
        child.send_signal(signal.SIGUSR1 if signum == signal.SIGUSR1 else signal.SIGTERM)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
        signal.signal(sig, forward)
    assert child.stdout is not None
    answering = threading.Thread(target=forward_answers, args=(child.stdout,),
                                 name="dit4c-answers", daemon=True)
    answering.start()
    status = child.wait()
    answering.join(timeout=1.0)
    fuse_server.unmount(target)
    log.info("storage stopped (file server exit status %s)", status)
    return status


def forward_answers(answers: IO[bytes]) -> None:
    """``serve``'s answers on to the container's output (the node's attach), making
    ``STORAGE_READY_FILE`` before passing on ``ready``."""
    for line in answers:
        answer = parse_answer(line)
        if answer is not None and answer[0] == READY and not os.path.exists(STORAGE_READY_FILE):
            Path(STORAGE_READY_FILE).touch()
            log.info("storage ready at %s", STORAGE_MOUNT)
        os.write(sys.stdout.fileno(), line)


# -- serve: the file server, unprivileged ----------------------------------------------------

_answering = threading.Lock()


def answer(kind: str, value: str) -> None:
    # Whole lines, one write each: the binds' thread answers too.
    with _answering:
        os.write(sys.stdout.fileno(), answer_line(kind, value))


def first_bind(lines: IO[bytes]) -> StorageConfig | None:
    """The settings of the first bind on ``lines``; None (having said why) if it is bad or the
    input ended first."""
    line = lines.readline(MAX_LINE + 1)
    if not line:
        log.error("standard input closed before a bind came")
        return None
    try:
        return StorageConfig.from_env(parse_bind(line))
    except (MessageError, ConfigError) as exc:
        answer(ERROR, str(exc))
        return None


def take_binds(lines: IO[bytes], config: StorageConfig, ready: threading.Event) -> None:
    """Later binds (the node rebinding after its own restart, the storage keeper renewing):
    the same storage's credentials and quota go to the session file, where the store and the
    quota look, and are answered as the first bind was; other storage is refused."""
    while line := lines.readline(MAX_LINE + 1):
        try:
            again = StorageConfig.from_env(parse_bind(line))
        except (MessageError, ConfigError) as exc:
            answer(ERROR, str(exc))
            continue
        if (again.where, again.endpoint_url) != (config.where, config.endpoint_url):
            answer(ERROR, f"this storage helper is bound to {config.where}")
            continue
        _write_atomic(Path(STORAGE_SESSION_FILE), json.dumps(
            {"credentials": again.credentials, "quota_bytes": again.quota_bytes}))
        answer(BOUND, config.where)
        if ready.is_set():
            answer(READY, config.where)


def serve(config: StorageConfig | None, fd: int) -> int:
    # `docker kill -s USR1` on the helper prints every thread's stack (a hung file system).
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    # Imported here, not at the top: ``run`` (whose start a launch waits for) never needs boto3.
    from helpers.storage.filesystem import StorageFS  # noqa: PLC0415
    from helpers.storage.store import (  # noqa: PLC0415
        Credentials,
        S3Store,
        StoreError,
        warm_session,
    )

    session = warm_session()
    ready = threading.Event()
    if config is None:  # pooled: everything above was paid before the launch
        binds = sys.stdin.buffer
        config = first_bind(binds)
        if config is None:
            return 2
        threading.Thread(target=take_binds, args=(binds, config, ready),
                         name="dit4c-binds", daemon=True).start()
        answer(BOUND, config.where)
    credentials = Credentials(config.credentials, Path(STORAGE_SESSION_FILE), key="credentials")
    store = S3Store(bucket=config.bucket, prefix=config.prefix, credentials=credentials,
                    endpoint_url=config.endpoint_url, region=config.region, session=session)
    quota = Quota(config.quota_bytes)
    where = config.where
    # A restarted helper may start with credentials that expired (the settings of its
    # container, or a bind from the record): the node daemon sees the restart and hands over
    # renewed ones.
    waited = time.monotonic() + CREDENTIALS_WAIT_SECONDS
    if credentials.expired(margin=5):
        log.info("credentials expired: waiting for renewed ones")
    while credentials.expired(margin=5) and time.monotonic() < waited:
        time.sleep(1.0)
    for attempt in range(1, START_ATTEMPTS + 1):
        try:
            store.list_dir("")  # the credentials and the store checked; usage is counted later
            break
        except StoreError as exc:
            # Only an unreachable store is tried again; a refusal is final.
            if attempt == START_ATTEMPTS or exc.code != errno.EIO:
                print(f"storage: cannot use {where}: {exc}", file=sys.stderr, flush=True)
                answer(ERROR, f"cannot use {where}: {exc}")
                return 3
            log.warning("storage at %s not reachable yet (%s); trying again", where, exc)
            time.sleep(1.0)
    CACHE_DIR.mkdir(mode=0o700, exist_ok=True)
    fs = StorageFS(store, quota, CACHE_DIR)
    server = fuse_server.FuseServer(fd, fs)
    fs.notifier = server
    serving = threading.Thread(target=server.serve, name="dit4c-fuse", daemon=True)
    serving.start()
    stop = threading.Event()
    threading.Thread(target=fs.watch, args=(stop,), name="dit4c-watch", daemon=True).start()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    log.info("serving %s at %s (quota %s bytes)", where, STORAGE_MOUNT, quota.limit)
    ready.set()
    answer(READY, where)
    threading.Thread(target=first_count, args=(fs, quota, stop), name="dit4c-count",
                     daemon=True).start()
    upkeep(fs, quota, stop, serving)
    left = fs.store_all(time.monotonic() + STOP_SECONDS)
    for path in left:
        log.error("could not store %s before stopping: its changes are lost", path)
    write_status(fs, quota)
    return 1 if left else 0


def first_count(fs: StorageFS, quota: Quota, stop: threading.Event) -> None:
    """The first full count of the user's usage, once the mount serves: a count lists the
    whole prefix (one call per 1,000 objects), which a launch would otherwise wait for. Until
    it is in, writes are checked against what this helper has seen (as writes of another
    instance are between counts) and the status says no usage. Tried again every
    ``UPKEEP_SECONDS`` until it succeeds; a thread of its own, so that a stop never waits
    for it."""
    from helpers.storage.store import StoreError  # noqa: PLC0415 - as in serve

    while not stop.is_set():
        try:
            quota.counted(fs.store.usage())
            log.info("usage counted: %s bytes", quota.used)
            return
        except StoreError as exc:
            fs.failed(f"counting usage failed: {exc}")
        stop.wait(UPKEEP_SECONDS)


def upkeep(fs: StorageFS, quota: Quota, stop: threading.Event,
           serving: threading.Thread) -> None:
    """Until ``stop`` (or the mount goes away): store again what failed, trim the local copies,
    take new quota from a renewal, recount usage, write the status file."""
    from helpers.storage.store import StoreError  # noqa: PLC0415 - as in serve

    counted = time.monotonic()
    while not stop.wait(UPKEEP_SECONDS) and serving.is_alive():
        fs.retry_failed()
        fs.evict()
        session = read_session()
        if session is not None and "quota_bytes" in session:
            try:
                quota.set_limit(quota_of(session, STORAGE_SESSION_FILE))
            except ConfigError as exc:
                log.warning("%s", exc)
        if time.monotonic() - counted > RECOUNT_SECONDS:
            try:
                quota.counted(fs.store.usage())
                counted = time.monotonic()
            except StoreError as exc:
                fs.failed(f"counting usage failed: {exc}")
        write_status(fs, quota)


def read_session() -> dict[str, Any] | None:
    try:
        found = json.loads(Path(STORAGE_SESSION_FILE).read_text())
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None


def write_status(fs: StorageFS, quota: Quota) -> None:
    failing = dict(fs.failures)
    message = None
    if failing:
        path, error = next(iter(failing.items()))
        message = f"{len(failing)} changed file(s) not stored yet, e.g. {path}: {error}"
    elif fs.last_error and time.monotonic() - fs.last_error_at < ERROR_SHOWN_SECONDS:
        message = fs.last_error
    status = {"ok": message is None, "message": message,
              "usage_bytes": quota.used if quota.known else None,
              "quota_bytes": quota.limit,
              "at": datetime.now(UTC).isoformat(timespec="seconds")}
    _write_atomic(Path(STORAGE_STATUS_FILE), json.dumps(status))


def _write_atomic(path: Path, text: str) -> None:
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(text)
        partial.replace(path)
    except OSError as exc:
        log.warning("cannot write %s: %s", path, exc)


# -- renew and unmount: run by the node daemon -----------------------------------------------


def renew(env: dict[str, str]) -> int:
    try:
        session = json.loads(env.get(ENV_STORAGE_SESSION, ""))
        if not isinstance(session, dict) or not isinstance(session.get("credentials"), dict):
            raise ValueError
        quota_of(session, ENV_STORAGE_SESSION)
    except (ValueError, ConfigError):
        print(f"storage: {ENV_STORAGE_SESSION} must be a JSON object with credentials",
              file=sys.stderr)
        return 2
    _write_atomic(Path(STORAGE_SESSION_FILE), json.dumps(session))
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("botocore").setLevel(logging.WARNING)
    args = sys.argv[1:] if argv is None else argv
    command = args[0] if args else "run"
    if command == "renew":
        return renew(dict(os.environ))
    if command == "unmount":
        while fuse_server.unmount(STORAGE_MOUNT):
            log.info("detached %s", STORAGE_MOUNT)
        return 0
    if command not in ("run", "serve"):
        print(f"storage: unknown command {command!r} (run, serve, renew, unmount)",
              file=sys.stderr)
        return 2
    env = dict(os.environ)
    config = None
    if ENV_STORAGE in env or ENV_SANDBOX not in env:  # else pooled: bound on stdin later
        try:
            config = StorageConfig.from_env(env)
        except ConfigError as exc:
            print(f"storage: {exc}", file=sys.stderr)
            return 2
    if command == "run":
        return run(config)
    return serve(config, int(env[ENV_FD]))


if __name__ == "__main__":
    sys.exit(main())
