"""A Lambda runtime for tests: the packaged artifact's handlers in an interpreter of their own.

``python3.13 -I -S tests/support/lambda_runtime.py ARTIFACT_DIR`` imports nothing but the standard
library and what is in ``ARTIFACT_DIR`` (``-I -S``: no site-packages, no PYTHONPATH), as Lambda
runs ``/var/task``. It reads one JSON request per line on stdin,
``{"handler": "module.attribute", "event": {...}}``, calls the handler with the event and a
context like Lambda's, and writes one JSON line per request to its original stdout:
``{"result": ...}`` or ``{"error": "<type>", "message": ..., "trace": ...}``. What the handler
logs or prints goes to stderr (Chalice logs to stdout on Lambda). Handlers are imported on first
use and kept, like a warm Lambda container. This file is run by path and imports no project
module (tests/support/deploy.py drives it).
"""

import importlib
import json
import os
import sys
import time
import traceback
import uuid


class Context:
    """The attributes of Lambda's context object that code reads."""

    def __init__(self, handler: str, timeout_seconds: float = 29.0) -> None:
        self.function_name = handler
        self.function_version = "$LATEST"
        self.invoked_function_arn = f"arn:aws:lambda:us-east-1:123456789012:function:{handler}"
        self.memory_limit_in_mb = 512
        self.aws_request_id = str(uuid.uuid4())
        self.log_group_name = f"/aws/lambda/{handler}"
        self.log_stream_name = "test"
        self._deadline = time.monotonic() + timeout_seconds

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def main() -> None:
    sys.path.insert(0, os.path.abspath(sys.argv[1]))
    answers = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    handlers = {}
    for line in sys.stdin:
        request = json.loads(line)
        name = request["handler"]
        try:
            if name not in handlers:
                module, attribute = name.rsplit(".", 1)
                handlers[name] = getattr(importlib.import_module(module), attribute)
            answer = {"result": handlers[name](request["event"], Context(name))}
        except Exception as exc:
            answer = {"error": type(exc).__name__, "message": str(exc),
                      "trace": traceback.format_exc()}
        answers.write(json.dumps(answer, default=str) + "\n")


if __name__ == "__main__":
    main()
