"""``python3 -m helpers.auth``: run the auth helper with its settings from the environment."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from aiohttp import web

from helpers.auth.app import AuthHelper
from helpers.auth.config import AuthConfig
from helpers.auth.errors import ConfigError

log = logging.getLogger("dit4c.auth")


async def serve(config: AuthConfig) -> None:
    runner = web.AppRunner(AuthHelper(config).web_app(), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, config.listen_host, config.listen_port)
        await site.start()
        for address in runner.addresses:
            # Tests start the helper on port 0 and read the real port from this line.
            log.info("auth helper listening on %s:%s", *address[:2])
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("auth helper stopping")
    finally:
        await runner.cleanup()


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
