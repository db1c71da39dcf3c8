"""``python3 -m helpers.listener``: settings from the environment (names in protocol/pod.py).
In a pooled sandbox (``DIT4C_SANDBOX`` set), the same settings come from a bind on standard
input instead (:mod:`helpers.listener.sandbox`).
``python3 -m helpers.listener renew``: hand the running listener a renewed tunnel token
(:mod:`helpers.listener.tokens`).

With the auth helper's settings too (``DIT4C_AUTH_UPSTREAM`` and the rest, as in a pod), the
auth helper runs in this process and every stream goes to its gate in-process
(:mod:`helpers.listener.streams`); the gate also listens on ``DIT4C_AUTH_LISTEN``.
Otherwise each stream is a TCP connection to ``DIT4C_UPSTREAM``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from collections.abc import Mapping

import aiohttp

from helpers.auth.app import AuthHelper
from helpers.auth.config import AuthConfig
from helpers.auth.errors import ConfigError
from helpers.auth.server import AuthServer
from helpers.listener.links import RouterLink, StreamServer
from helpers.listener.links import session as links_session
from helpers.listener.sandbox import Sandbox, stdin_reader
from helpers.listener.tokens import TunnelToken
from helpers.listener.tokens import write as write_token
from protocol import heap
from protocol.errors import TokenError
from protocol.pod import (
    ENV_AUTH_UPSTREAM,
    ENV_HOSTNAME,
    ENV_ROUTER_URLS,
    ENV_TUNNEL_TOKEN,
    ENV_TUNNEL_TOKEN_FILE,
    ENV_UPSTREAM,
)
from protocol.sandbox import ENV_SANDBOX
from protocol.tokens import KeySet, SigningKey, verify

log = logging.getLogger("dit4c.listener")


class SettingsError(Exception):
    """A required setting is missing or malformed; the message names it."""


def settings(env: dict[str, str]
             ) -> tuple[TunnelToken, list[str], str, tuple[str, int] | AuthConfig]:
    """(token, router URLs, hostname, upstream) from the environment; the upstream is the auth
    helper's settings when it runs in this process."""
    def required(name: str) -> str:
        value = env.get(name, "").strip()
        if not value:
            raise SettingsError(f"{name} must be set")
        return value

    urls = [u.strip() for u in required(ENV_ROUTER_URLS).split(",") if u.strip()]
    for url in urls:
        if not url.startswith(("ws://", "wss://")):
            raise SettingsError(f"{ENV_ROUTER_URLS}: {url!r} is not a ws:// or wss:// URL")
    token = TunnelToken(required(ENV_TUNNEL_TOKEN), env.get(ENV_TUNNEL_TOKEN_FILE) or None)
    hostname = required(ENV_HOSTNAME).lower()
    if env.get(ENV_AUTH_UPSTREAM):
        try:
            return token, urls, hostname, AuthConfig.from_env(env)
        except ConfigError as exc:
            raise SettingsError(str(exc)) from None
    host, sep, port = required(ENV_UPSTREAM).rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise SettingsError(f"{ENV_UPSTREAM} must be host:port")
    return token, urls, hostname, (host, int(port))


class Listener:
    """A started listener (:meth:`start`): the auth helper when it runs here, one link per
    router and the token file's watch; :meth:`stop` ends them."""

    def __init__(self, instance_id: str, tool: tuple[str, int], auth: AuthServer | None,
                 session: aiohttp.ClientSession, tasks: list[asyncio.Task[None]]) -> None:
        self.instance_id = instance_id
        self.tool = tool
        self._auth = auth
        self._session = session
        self._tasks = tasks

    @classmethod
    async def start(cls, token: TunnelToken, urls: list[str], hostname: str,
                    upstream: tuple[str, int] | AuthConfig) -> Listener:
        log.info("listener for %s: routers %s, upstream %s", hostname, ", ".join(urls),
                 "the auth gate, in this process" if isinstance(upstream, AuthConfig)
                 else f"{upstream[0]}:{upstream[1]}")
        auth = None
        target: tuple[str, int] | StreamServer
        if isinstance(upstream, AuthConfig):
            auth = AuthServer(AuthHelper(upstream))
            await auth.start(upstream.listen_host, upstream.listen_port)
            assert auth.gate is not None and auth.gate.tool is not None
            target, tool, instance_id = auth.gate.connection, auth.gate.tool, upstream.instance_id
            for host, port in auth.addresses:
                log.info("auth helper listening on %s:%s (and on every stream)", host, port)
        else:
            target, tool, instance_id = upstream, upstream, hostname.partition(".")[0]
        session = links_session()
        links = [RouterLink(session, url, token=token, hostname=hostname, upstream=target)
                 for url in urls]
        tasks = [asyncio.ensure_future(link.run()) for link in links]
        tasks.append(asyncio.ensure_future(token.watch()))
        return cls(instance_id, tool, auth, session, tasks)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._session.close()
        if self._auth is not None:
            await self._auth.stop()


def stop_on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def run(token: TunnelToken, urls: list[str], hostname: str,
              upstream: tuple[str, int] | AuthConfig) -> None:
    stop = stop_on_signals()
    listener = await Listener.start(token, urls, hostname, upstream)
    heap.freeze()
    try:
        await stop.wait()
    finally:
        await listener.stop()


async def start_from(env: Mapping[str, str]) -> Listener:
    """A listener started from settings (a pooled one's bind merged over its environment)."""
    token, urls, hostname, upstream = settings(dict(env))
    listener = await Listener.start(token, urls, hostname, upstream)
    heap.freeze()  # again: the bind made the auth gate, the links and their sessions
    return listener


async def run_sandbox(env: Mapping[str, str]) -> None:
    stop = stop_on_signals()
    warm_up()
    heap.freeze()
    await Sandbox(env, start_from).run(await stdin_reader(), stop)


def warm_up() -> None:
    """Pay now, while pooled, what a first sign-in would otherwise pay: the lazy set-up of the
    token verifier (a JWK parsed, a signature checked)."""
    try:
        key = SigningKey.generate()
        now = int(time.time())
        token = key.sign({"aud": "warm-up", "iat": now, "exp": now + 60})
        verify(token, KeySet.from_jwks({"keys": [key.public_jwk()]}), audience="warm-up")
    except TokenError as exc:
        # Only a speed-up. The image's PyJWT writes a P-256 coordinate with a leading zero
        # byte short (about one key in 64), which the JWK reader refuses: never fatal here.
        log.info("token verifier not warmed up: %s", exc)


def renew(env: dict[str, str]) -> int:
    """``python3 -m helpers.listener renew``: the node daemon hands over a renewed token
    (``DIT4C_TUNNEL_TOKEN``), which the running listener picks up from its token file."""
    token = env.get(ENV_TUNNEL_TOKEN, "").strip()
    path = env.get(ENV_TUNNEL_TOKEN_FILE, "").strip()
    if not token or not path:
        print(f"listener renew: {ENV_TUNNEL_TOKEN} and {ENV_TUNNEL_TOKEN_FILE} must be set",
              file=sys.stderr)
        return 2
    write_token(path, token)
    return 0


def main() -> int:
    if sys.argv[1:] == ["renew"]:
        return renew(dict(os.environ))
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    env = dict(os.environ)
    if env.get(ENV_SANDBOX) and not env.get(ENV_TUNNEL_TOKEN):
        log.info("sandbox %s: waiting for a bind on standard input", env[ENV_SANDBOX])
        asyncio.run(run_sandbox(env))
        return 0
    try:
        token, urls, hostname, upstream = settings(env)
    except SettingsError as exc:
        print(f"listener: {exc}", file=sys.stderr)
        return 2
    asyncio.run(run(token, urls, hostname, upstream))
    return 0


if __name__ == "__main__":
    sys.exit(main())
