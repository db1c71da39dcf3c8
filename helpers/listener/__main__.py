"""``python3 -m helpers.listener``: settings from the environment (names in protocol/pod.py)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

from helpers.listener.links import RouterLink
from helpers.listener.links import session as links_session
from protocol.pod import ENV_HOSTNAME, ENV_ROUTER_URLS, ENV_TUNNEL_TOKEN, ENV_UPSTREAM


class SettingsError(Exception):
    """A required setting is missing or malformed; the message names it."""


def settings(env: dict[str, str]) -> tuple[str, list[str], str, tuple[str, int]]:
    """(token, router URLs, hostname, upstream) from the environment."""
    def required(name: str) -> str:
        value = env.get(name, "").strip()
        if not value:
            raise SettingsError(f"{name} must be set")
        return value

    urls = [u.strip() for u in required(ENV_ROUTER_URLS).split(",") if u.strip()]
    for url in urls:
        if not url.startswith(("ws://", "wss://")):
            raise SettingsError(f"{ENV_ROUTER_URLS}: {url!r} is not a ws:// or wss:// URL")
    host, sep, port = required(ENV_UPSTREAM).rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise SettingsError(f"{ENV_UPSTREAM} must be host:port")
    return required(ENV_TUNNEL_TOKEN), urls, required(ENV_HOSTNAME).lower(), (host, int(port))


async def run(token: str, urls: list[str], hostname: str, upstream: tuple[str, int]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with links_session() as session:
        links = [RouterLink(session, url, token=token, hostname=hostname, upstream=upstream)
                 for url in urls]
        tasks = [asyncio.ensure_future(link.run()) for link in links]
        await stop.wait()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def main() -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        token, urls, hostname, upstream = settings(dict(os.environ))
    except SettingsError as exc:
        print(f"listener: {exc}", file=sys.stderr)
        return 2
    logging.getLogger("dit4c.listener").info(
        "listener for %s: routers %s, upstream %s:%d", hostname, ", ".join(urls), *upstream)
    asyncio.run(run(token, urls, hostname, upstream))
    return 0


if __name__ == "__main__":
    sys.exit(main())
