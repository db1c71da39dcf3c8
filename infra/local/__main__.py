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
    args = parser.parse_args(argv)

    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        config = LocalConfig.from_env()
    except LocalStackError as exc:
        print(f"dit4c: error: {exc}", file=sys.stderr)
        return 2
    _access_log(config)
    status = LocalStack(config).run()
    # Everything the stack started is stopped and its files are closed. Skip the interpreter's
    # teardown: freeing moto's in-memory state and thousands of modules takes seconds, and
    # Ctrl-C should give the terminal back at once.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def _access_log(config: LocalConfig) -> None:
    """The portal's one line per request goes to a file, not the terminal."""
    logs = config.data_dir / "logs"
    logs.mkdir(mode=0o700, parents=True, exist_ok=True)
    handler = logging.FileHandler(logs / "portal-access.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    access = logging.getLogger("dit4c.local.portal.access")
    access.addHandler(handler)
    access.propagate = False


if __name__ == "__main__":
    sys.exit(main())
