"""``python -m edge_router``: configuration from the environment (edge_router.config).

Signals: ``SIGTERM``/``SIGINT`` stop the router; ``SIGHUP`` reads the TLS certificate files
again without closing any connection (what ``systemctl reload`` sends).
"""

from __future__ import annotations

import asyncio
import logging
import resource
import signal
import sys

from edge_router.config import RouterConfig
from edge_router.errors import ConfigError
from edge_router.server import Router, run


async def _until_signalled(router: Router) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, router.reload_tls)
    await stop.wait()


def main() -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        config = RouterConfig.from_env()
    except ConfigError as exc:
        print(f"edge_router: {exc}", file=sys.stderr)
        return 2
    # Every tunnel and client is a file descriptor: take all the kernel allows us.
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        asyncio.run(run(config, _until_signalled))
    except ConfigError as exc:  # found at start-up: the certificate files
        print(f"edge_router: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
