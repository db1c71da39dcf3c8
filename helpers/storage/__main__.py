"""``python3 -m helpers.storage``: settings from the environment (names in protocol/pod.py).

Downloads the user's files into /mnt (retrying until it succeeds), then logs ``storage ready``
and makes ``protocol.pod.STORAGE_READY_FILE`` (the node daemon waits for it). Then syncs every
``DIT4C_STORAGE_SYNC_SECONDS`` (default 30) and once more on SIGTERM/SIGINT before exiting.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from helpers.storage.s3 import S3Store
from helpers.storage.sync import Mirror, StorageError
from protocol.pod import ENV_STORAGE, ENV_STORAGE_SYNC_SECONDS, STORAGE_READY_FILE

log = logging.getLogger("dit4c.storage")

ROOT = Path("/mnt")
READY_FILE = Path(STORAGE_READY_FILE)
"""Exists once the initial download finished (outside /mnt: the tool must not see it)."""
DEFAULT_SYNC_SECONDS = 30.0
RETRY_SECONDS = 5.0


def settings(env: dict[str, str]) -> tuple[dict[str, Any], float]:
    """(the storage object, sync interval) from the environment."""
    try:
        storage = json.loads(env.get(ENV_STORAGE, ""))
    except ValueError:
        raise StorageError(f"{ENV_STORAGE} must be a JSON object") from None
    if not isinstance(storage, dict) or storage.get("kind") != "s3":
        raise StorageError(f"{ENV_STORAGE} must be a JSON object with kind \"s3\"")
    for name in ("bucket", "prefix"):
        if not isinstance(storage.get(name), str) or (name == "bucket" and not storage[name]):
            raise StorageError(f"{ENV_STORAGE}: {name} must be a string")
    if not isinstance(storage.get("credentials", {}), dict):
        raise StorageError(f"{ENV_STORAGE}: credentials must be an object")
    try:
        interval = float(env.get(ENV_STORAGE_SYNC_SECONDS) or DEFAULT_SYNC_SECONDS)
    except ValueError:
        raise StorageError(f"{ENV_STORAGE_SYNC_SECONDS} must be a number of seconds") from None
    if interval <= 0:
        raise StorageError(f"{ENV_STORAGE_SYNC_SECONDS} must be positive")
    return storage, interval


def run(mirror: Mirror, interval: float, stop: threading.Event,
        ready_file: Path = READY_FILE) -> None:
    """Download, make ``ready_file``, then sync every ``interval`` until ``stop`` is set, and
    once more then."""
    while not stop.is_set():
        try:
            count = mirror.download_all()
            break
        except Exception as exc:  # network or S3 errors: try again
            log.warning("initial download failed, retrying in %gs: %s", RETRY_SECONDS, exc)
            stop.wait(RETRY_SECONDS)
    else:
        log.info("stopped before the initial download finished: nothing synced")
        return
    ready_file.parent.mkdir(parents=True, exist_ok=True)
    ready_file.touch()
    log.info("storage ready: %d files in %s", count, mirror.root)
    while True:
        stopping = stop.wait(interval)
        try:
            uploaded, deleted = mirror.sync()
            if uploaded or deleted:
                log.info("synced: %d uploaded, %d deleted", uploaded, deleted)
        except Exception as exc:  # the next round tries again
            log.warning("sync failed: %s", exc)
        if stopping:
            return


def main() -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("botocore").setLevel(logging.WARNING)
    try:
        storage, interval = settings(dict(os.environ))
    except StorageError as exc:
        print(f"storage: {exc}", file=sys.stderr)
        return 2
    # The tool may run as any uid: it must be able to change what we download, and to write
    # in the (root-owned) volume.
    os.umask(0)
    ROOT.chmod(0o777)
    store = S3Store(bucket=storage["bucket"], prefix=storage["prefix"],
                    credentials=storage.get("credentials") or {},
                    endpoint_url=storage.get("endpoint_url"))
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    log.info("storage: s3://%s/%s -> %s every %gs", store.bucket, store.prefix, ROOT, interval)
    run(Mirror(ROOT, store), interval, stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
