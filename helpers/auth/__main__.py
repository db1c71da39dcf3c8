"""``python3 -m helpers.auth``: run the auth helper with its settings from the environment."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from helpers.auth.app import AuthHelper
from helpers.auth.config import AuthConfig
from helpers.auth.errors import ConfigError
from helpers.auth.server import AuthServer
from protocol import heap

log = logging.getLogger("dit4c.auth")


async def serve(config: AuthConfig) -> None:
    server = AuthServer(AuthHelper(config))
    try:
        await server.start(config.listen_host, config.listen_port)
        for host, port in server.addresses:
            # Tests start the helper on port 0 and read the real port from this line.
            log.info("auth helper listening on %s:%s", host, port)
        heap.freeze()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("auth helper stopping")
    finally:
        await server.stop()


def main() -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = AuthConfig.from_env()
    except ConfigError as exc:
        log.error("bad configuration: %s", exc)
        return 2
    asyncio.run(serve(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
