"""``python -m infra.local run``: the embedded local stack in the foreground (``make run``)."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from infra.local.config import LocalConfig
from infra.local.errors import LocalStackError
from infra.local.stack import LocalStack


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m infra.local",
        description="dit4c's embedded local stack; settings come from DIT4C_* environment "
                    "variables (docs/local-stack.md).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="start everything in the foreground; Ctrl-C stops it")
    run.add_argument("--log-level", default="INFO")
    run.add_argument("--restart-children", action="store_true",
                     help="start the edge router or node daemon again when it exits, instead "
                          "of stopping the stack (what the fault suite runs)")
    args = parser.parse_args(argv)

    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        config = LocalConfig.from_env()
    except LocalStackError as exc:
        print(f"dit4c: error: {exc}", file=sys.stderr)
        return 2
    try:
        _log_files(config)
    except OSError as exc:
        print(f"dit4c: error: cannot use data directory {config.data_dir} (DIT4C_DATA_DIR): "
              f"{exc}", file=sys.stderr)
        return 2
    status = LocalStack(config, restart_children=args.restart_children).run()
    # Everything the stack started is stopped and its files are closed. Skip the interpreter's
    # teardown: freeing moto's in-memory state and thousands of modules takes seconds, and
    # Ctrl-C should give the terminal back at once.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def _log_files(config: LocalConfig) -> None:
    """The stack's own log to ``logs/stack.log`` as well as the terminal; the portal's one line
    per request only to ``logs/portal-access.log``."""
    logs = config.data_dir / "logs"
    logs.mkdir(mode=0o700, parents=True, exist_ok=True)
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s")
    stack_log = logging.FileHandler(logs / "stack.log")
    stack_log.setFormatter(formatter)
    logging.getLogger().addHandler(stack_log)
    # boto's "Found credentials in environment variables" and the like say nothing here.
    for name in ("botocore", "boto3", "urllib3"):
        logging.getLogger(name).setLevel(logging.WARNING)
    access = logging.FileHandler(logs / "portal-access.log")
    access.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    access_log = logging.getLogger("dit4c.local.portal.access")
    access_log.addHandler(access)
    access_log.propagate = False


if __name__ == "__main__":
    sys.exit(main())
