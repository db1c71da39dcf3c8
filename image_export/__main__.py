"""``python -m image_export``: the image exporter (see ``image_export/__init__.py``).

=============================  ==============================================  ================
variable                       meaning                                         default
=============================  ==============================================  ================
``DIT4C_EXPORT_LISTEN``        comma list of ``host:port`` to listen on         127.0.0.1:5002
``DIT4C_EXPORT_REGISTRY_URL``  the image server's base URL from here            required
=============================  ==============================================  ================
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from urllib.parse import urlsplit

from aiohttp import web

from image_export.app import make_app


async def serve(registry_url: str, listen: list[tuple[str, int]]) -> None:
    runner = web.AppRunner(make_app(registry_url), handle_signals=False)
    await runner.setup()
    for host, port in listen:
        await web.TCPSite(runner, host, port).start()
    logging.getLogger("dit4c.export").info("image exporter on %s for %s",
                                           ", ".join(f"{h}:{p}" for h, p in listen),
                                           registry_url)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main() -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    registry = os.environ.get("DIT4C_EXPORT_REGISTRY_URL", "")
    if urlsplit(registry).scheme not in ("http", "https"):
        print("image_export: DIT4C_EXPORT_REGISTRY_URL must be an http(s) URL",
              file=sys.stderr)
        return 2
    listen = []
    for item in os.environ.get("DIT4C_EXPORT_LISTEN", "127.0.0.1:5002").split(","):
        host, _, port = item.strip().rpartition(":")
        if not host or not port.isdigit():
            print(f"image_export: DIT4C_EXPORT_LISTEN: {item!r} is not host:port",
                  file=sys.stderr)
            return 2
        listen.append((host, int(port)))
    asyncio.run(serve(registry, listen))
    return 0


if __name__ == "__main__":
    sys.exit(main())
