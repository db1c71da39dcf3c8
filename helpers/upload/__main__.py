"""``python3 -m helpers.upload``: push the image in ``protocol.pod.UPLOAD_DIR``.

Settings: ``DIT4C_UPLOAD`` (``protocol.pod.ENV_UPLOAD``). Output on stdout, one JSON object a
line, which the node daemon reads from the container's log: ``{"progress": <percent>}`` as the
upload goes (at most twice a second), then ``{"result": {"digest", "size"}}`` and exit 0, or
``{"error": "<reason>"}`` and exit 1 (2: bad settings). Logs go to stderr.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path

from helpers.upload.push import UploadError, UploadSettings, push
from protocol.pod import ENV_UPLOAD, UPLOAD_DIR, UPLOAD_RESULT_KEY

PROGRESS_EVERY = 0.5


def say(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


def main() -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        settings = UploadSettings.from_json(os.environ.get(ENV_UPLOAD, ""), ENV_UPLOAD)
    except UploadError as exc:
        say(error=str(exc))
        return 2
    last = 0.0

    def progress(percent: int) -> None:
        nonlocal last
        now = time.monotonic()
        if percent >= 100 or now - last >= PROGRESS_EVERY:
            last = now
            say(progress=percent)

    try:
        result = push(settings, Path(UPLOAD_DIR), progress)
    except UploadError as exc:
        say(error=str(exc))
        return 1
    say(**{UPLOAD_RESULT_KEY: result})
    return 0


if __name__ == "__main__":
    sys.exit(main())
