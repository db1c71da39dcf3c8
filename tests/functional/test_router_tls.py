"""The router on a public host: HTTPS from certificate files reloaded on SIGHUP (a real router
process, a real signal) without dropping tunnels or client connections, and the plain-HTTP
listener that redirects to HTTPS."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from helpers.listener.links import CONNECT_TIMEOUT
from protocol.tokens import SigningKey
from protocol.tunnel import TUNNEL_PATH
from tests.ports import free_port
from tests.support import router as harness
from tests.support.certs import der, self_signed
from tests.support.process import ROOT, Process
from tests.support.router_stack import HOST, INSTANCE, upstream

__all__ = ["upstream"]

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def jwks() -> AsyncIterator[tuple[SigningKey, str]]:
    """A signing key and the URL of its JWKS, as the control plane serves it."""
    key = SigningKey.generate()

    async def serve(request: web.Request) -> web.Response:
        return web.json_response({"keys": [key.public_jwk()]})

    app = web.Application()
    app.router.add_get("/.well-known/jwks.json", serve)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    yield key, f"http://{host}:{port}/.well-known/jwks.json"
    await runner.cleanup()


async def served_certificate(port: int) -> bytes:
    """The certificate a new handshake with the router gets (DER)."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context,
                                              server_hostname=HOST)
    try:
        certificate: bytes = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        return certificate
    finally:
        writer.close()


async def until(check: object, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        assert callable(check)
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"not within {within} s: {check}")


async def test_sighup_serves_the_new_certificate_and_keeps_tunnels_and_connections(
        upstream: tuple[str, int], jwks: tuple[SigningKey, str], tmp_path: Path) -> None:
    key, jwks_url = jwks
    live = tmp_path / "live"
    live.mkdir()
    first = self_signed(tmp_path, f"*.{harness.DOMAIN}", ip="127.0.0.1", prefix="first-")
    second = self_signed(tmp_path, f"*.{harness.DOMAIN}", ip="127.0.0.1", prefix="second-")
    cert, cert_key = str(live / "cert.pem"), str(live / "key.pem")

    def install(pair: tuple[str, str]) -> None:
        """As certbot renews: new files moved into place."""
        for source, target in zip(pair, (cert, cert_key), strict=True):
            shutil.copyfile(source, target + ".new")
            os.replace(target + ".new", target)

    install(first)
    tls_port, metrics_port = free_port(), free_port()
    router = Process([sys.executable, "-m", "edge_router"], env={
        "DIT4C_ROUTER_DOMAIN": harness.DOMAIN, "DIT4C_ROUTER_JWKS_URL": jwks_url,
        "DIT4C_ROUTER_TOKEN_ISSUER": harness.ISSUER,
        "DIT4C_ROUTER_TLS_LISTEN": f"127.0.0.1:{tls_port}",
        "DIT4C_ROUTER_TLS_CERT": cert, "DIT4C_ROUTER_TLS_KEY": cert_key,
        "DIT4C_ROUTER_METRICS_LISTEN": f"127.0.0.1:{metrics_port}"})
    trusted = ssl.create_default_context()
    for pair in (first, second):
        trusted.load_verify_locations(cafile=pair[0])
    # The listener dials wss:// and checks the router's certificate (both are trusted).
    links = harness.Links()
    links.session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=trusted),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT))
    client = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=trusted))
    try:
        await asyncio.to_thread(router.wait_for, "edge router for", 20)
        await links.start([f"wss://127.0.0.1:{tls_port}{TUNNEL_PATH}"],
                          token=harness.token(key, INSTANCE), hostname=HOST, upstream=upstream)
        base = f"https://127.0.0.1:{tls_port}"
        async with client.ws_connect(base + "/ws", headers={"Host": HOST}) as ws:
            await ws.send_str("before")
            assert await ws.receive_str(timeout=5) == "before"
            assert await served_certificate(tls_port) == der(first[0])

            install(second)
            router.proc.send_signal(signal.SIGHUP)

            async def renewed() -> bool:
                return await served_certificate(tls_port) == der(second[0])
            await until(renewed)
            # The WebSocket and the tunnel under it went through the reload untouched.
            await ws.send_str("after")
            assert await ws.receive_str(timeout=5) == "after"
            async with client.get(base + "/", headers={"Host": HOST}) as response:
                assert await response.text() == "hello from the tool\n"
            async with client.get(f"http://127.0.0.1:{metrics_port}/metrics") as response:
                metrics = await response.text()
            assert "dit4c_router_tunnels_opened_total 1.0" in metrics
            assert "dit4c_router_tunnels 1.0" in metrics

            # Files that do not make a pair: refused, the certificate served stays.
            shutil.copyfile(first[0], cert)  # the old certificate with the new key
            router.proc.send_signal(signal.SIGHUP)
            await asyncio.to_thread(router.wait_for, "TLS reload failed", 5)
            assert await served_certificate(tls_port) == der(second[0])
            await ws.send_str("still")
            assert await ws.receive_str(timeout=5) == "still"
        assert router.proc.poll() is None
    finally:
        await client.close()
        await links.close()
        router.stop()
    assert router.proc.returncode == 0


async def test_plain_http_redirects_to_https(tmp_path: Path) -> None:
    cert, cert_key = self_signed(tmp_path, f"*.{harness.DOMAIN}")
    router = await harness.start_router(
        SigningKey.generate(), listen=(), tls_listen=(("127.0.0.1", 0),), tls_cert=cert,
        tls_key=cert_key, redirect_listen=(("127.0.0.1", 0),))
    tls_port = router.tls_addresses[0][1]
    host, port = router.redirect_addresses[0]
    try:
        async with aiohttp.ClientSession() as client:
            for method in ("GET", "POST"):
                target = URL(f"http://{host}:{port}/lab/tree?x=1&y=%2F", encoded=True)
                async with client.request(method, target,
                                          headers={"Host": f"{INSTANCE.upper()}.dit4c.TEST:80"},
                                          allow_redirects=False) as response:
                    assert response.status == 308
                    assert response.headers["Location"] == (
                        f"https://{HOST}:{tls_port}/lab/tree?x=1&y=%2F")
            # Nothing but the router's own instance hosts: no redirect anywhere else.
            for other in ("evil.example", f"a.b.{harness.DOMAIN}", harness.DOMAIN):
                async with client.get(f"http://{host}:{port}/", headers={"Host": other},
                                      allow_redirects=False) as response:
                    assert response.status == 404, other
                    assert "Location" not in response.headers
            # No tunnel over plain HTTP either: a tunnel request is redirected like any other.
            async with client.get(f"http://{host}:{port}{TUNNEL_PATH}", headers={"Host": HOST},
                                  allow_redirects=False) as response:
                assert response.status == 308
        assert router.addresses == []  # with TLS, no plain proxy listener unless asked
    finally:
        await router.stop()


def test_certificate_files_that_do_not_load_stop_the_start(tmp_path: Path) -> None:
    cert, _ = self_signed(tmp_path, f"*.{harness.DOMAIN}")
    done = subprocess.run(
        [sys.executable, "-m", "edge_router"], cwd=ROOT, capture_output=True, text=True,
        timeout=30, check=False, env={**os.environ, "PYTHONPATH": str(ROOT),
                                      "DIT4C_ROUTER_DOMAIN": harness.DOMAIN,
                                      "DIT4C_ROUTER_JWKS_URL": "http://127.0.0.1:9/",
                                      "DIT4C_ROUTER_TLS_LISTEN": f"127.0.0.1:{free_port()}",
                                      "DIT4C_ROUTER_TLS_CERT": cert,
                                      "DIT4C_ROUTER_TLS_KEY": str(tmp_path / "missing.pem")})
    assert done.returncode == 2, done.stderr
    assert f"cannot load {cert} and {tmp_path / 'missing.pem'}" in done.stderr
    assert "Traceback" not in done.stderr
