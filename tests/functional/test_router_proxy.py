"""The router, a listener link and an upstream on loopback: plain HTTP through the tunnel."""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import os
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from protocol.tokens import SigningKey
from tests.support import router as harness
from tests.support.router_stack import HOST, Stack, stack, upstream

__all__ = ["stack", "upstream"]


async def test_plain_request_goes_through_the_tunnel(stack: Stack) -> None:
    async with await stack.get("/") as response:
        assert response.status == 200
        assert await response.text() == "hello from the tool\n"


async def test_keep_alive_requests_reuse_one_connection(stack: Stack) -> None:
    before = stack.router.stats.connections
    for _ in range(20):
        async with await stack.get("/") as response:
            assert await response.text() == "hello from the tool\n"
    assert stack.router.stats.connections == before + 1


async def test_forwarded_headers_are_ours_and_hop_by_hop_ones_are_gone(stack: Stack) -> None:
    sent = {"X-Forwarded-For": "6.6.6.6", "Keep-Alive": "timeout=5",
            "Connection": "keep-alive, X-Secret", "X-Secret": "drop me", "X-Kept": "yes"}
    async with await stack.get("/headers", HOST + ":8080", sent) as response:
        seen = await response.json()
    assert seen["X-Forwarded-For"] == "127.0.0.1"
    assert seen["X-Forwarded-Proto"] == "http"
    assert seen["X-Forwarded-Host"] == HOST + ":8080"
    assert "Keep-Alive" not in seen and "X-Secret" not in seen
    assert seen["X-Kept"] == "yes"


async def test_unknown_host_gets_404(stack: Stack) -> None:
    # Not a label of the id rule (protocol.ids) either: a-b, a_b, 64 characters.
    for host in ("nope." + harness.DOMAIN, "example.org", harness.DOMAIN, "a.b." + harness.DOMAIN,
                 "a-b." + harness.DOMAIN, "a_b." + harness.DOMAIN, "x" * 64 + "." + harness.DOMAIN):
        async with await stack.get("/", host=host) as response:
            assert response.status == 404
            assert "no instance" in await response.text()


async def test_known_instance_without_tunnel_gets_503(stack: Stack) -> None:
    await stack.links.close()
    for _ in range(100):
        if stack.router.routes.lookup(HOST) is None:
            break
        await asyncio.sleep(0.05)
    async with await stack.get("/") as response:
        assert response.status == 503
        assert "starting or offline" in await response.text()


async def test_upstream_down_gets_502(stack: Stack, upstream: tuple[str, int]) -> None:
    links = harness.Links()
    other = "down1"
    await links.start([harness.tunnel_url(stack.router)],
                      token=harness.token(stack.key, other), hostname=f"{other}.{harness.DOMAIN}",
                      upstream=("127.0.0.1", 1))
    try:
        async with await stack.get("/", host=f"{other}.{harness.DOMAIN}") as response:
            assert response.status == 502
    finally:
        await links.close()


async def test_streamed_100mb_upload_and_download(stack: Stack) -> None:
    size = 100 * 1024 * 1024
    block = bytes(range(256)) * 4096

    async def body() -> AsyncIterator[bytes]:
        for _ in range(size // len(block)):
            yield block

    expected = hashlib.sha256(block * (size // len(block))).hexdigest()
    digest = hashlib.sha256()
    received = 0
    async with stack.client.post(stack.base + "/echo", data=body(),
                                 headers={"Host": HOST}) as response:
        assert response.status == 200
        async for chunk in response.content.iter_chunked(1 << 20):
            digest.update(chunk)
            received += len(chunk)
    assert received == size
    assert digest.hexdigest() == expected

    received = 0
    async with await stack.get(f"/bytes/{size}") as response:
        assert response.headers["Content-Length"] == str(size)
        async for chunk in response.content.iter_chunked(1 << 20):
            received += len(chunk)
    assert received == size


async def test_websocket_echo_through_the_tunnel(stack: Stack) -> None:
    async with stack.client.ws_connect(stack.base + "/ws", headers={"Host": HOST}) as ws:
        for i in range(20):
            await ws.send_str(f"message {i}")
            assert (await ws.receive_str(timeout=5)) == f"message {i}"
        await ws.send_bytes(b"\x00" * 300_000)
        assert len(await ws.receive_bytes(timeout=5)) == 300_000


async def test_100_concurrent_streams_over_one_tunnel(stack: Stack) -> None:
    # From four client addresses: one address may hold at most 64 of a tunnel's streams.
    clients = [aiohttp.ClientSession(connector=aiohttp.TCPConnector(
        limit=0, force_close=True, local_addr=(f"127.0.0.{n}", 0))) for n in range(1, 5)]
    try:
        async def one(i: int) -> str:
            async with clients[i % 4].get(stack.base + "/sleep/0.2",
                                          headers={"Host": HOST}) as r:
                return await r.text()
        results = await asyncio.gather(*(one(i) for i in range(100)))
    finally:
        for client in clients:
            await client.close()
    assert results == ["slept\n"] * 100


async def test_client_disconnect_reaches_the_upstream(stack: Stack) -> None:
    """The browser goes away mid-request: the pod's upstream connection is closed too."""
    lost = asyncio.Event()
    arrived = asyncio.Event()

    class Upstream(asyncio.Protocol):
        def data_received(self, data: bytes) -> None:
            arrived.set()  # and never answer

        def connection_lost(self, exc: Exception | None) -> None:
            lost.set()

    loop = asyncio.get_running_loop()
    server = await loop.create_server(Upstream, "127.0.0.1", 0)
    links = harness.Links()
    other = f"hang1.{harness.DOMAIN}"
    await links.start([harness.tunnel_url(stack.router)],
                      token=harness.token(stack.key, "hang1"), hostname=other,
                      upstream=server.sockets[0].getsockname()[:2])
    try:
        host, port = stack.router.addresses[0]
        _, writer = await asyncio.open_connection(host, port)
        writer.write(f"GET /slow HTTP/1.1\r\nHost: {other}\r\n\r\n".encode())
        await asyncio.wait_for(arrived.wait(), 5)
        writer.close()
        await asyncio.wait_for(lost.wait(), 5)
    finally:
        await links.close()
        server.close()
        await server.wait_closed()


async def test_https_listener(upstream: tuple[str, int], tmp_path: Path) -> None:
    cert, key_file = self_signed(tmp_path, f"*.{harness.DOMAIN}")
    key = SigningKey.generate()
    router = await harness.start_router(key, tls_listen=(("127.0.0.1", 0),), tls_cert=cert,
                                        tls_key=key_file)
    links = harness.Links()
    try:
        await links.start([harness.tunnel_url(router)], token=harness.token(key, "abc123"),
                          hostname=HOST, upstream=upstream)
        context = ssl.create_default_context(cafile=cert)
        host, port = router.tls_addresses[0]
        async with aiohttp.ClientSession() as client, client.get(
                f"https://{host}:{port}/headers",
                server_hostname=HOST, ssl=context,
                headers={"Host": HOST}) as response:
            seen = await response.json()
        assert seen["X-Forwarded-Proto"] == "https"
    finally:
        await links.close()
        await router.stop()


def self_signed(directory: Path, name: str) -> tuple[str, str]:
    private = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
        .public_key(private.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(private, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return str(cert_path), str(key_path)


async def test_response_heads_split_anywhere_and_bodies_behind_them(stack: Stack) -> None:
    """An upstream that dribbles its head byte by byte, then sends head and 1 MB body in one
    write: both responses arrive intact and in order on one client connection."""
    big = os.urandom(1 << 20)

    async def upstream_side(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Slow: yes\r\n\r\n":
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.001)
        writer.write(b"hello")
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(big) + big)
        await writer.drain()
        await reader.read()
        writer.close()

    server = await asyncio.start_server(upstream_side, "127.0.0.1", 0)
    links = harness.Links()
    other = f"dribble.{harness.DOMAIN}"
    await links.start([harness.tunnel_url(stack.router)],
                      token=harness.token(stack.key, "dribble"), hostname=other,
                      upstream=server.sockets[0].getsockname()[:2])
    try:
        for expected in (b"hello", big):
            async with stack.client.get(stack.base + "/", headers={"Host": other}) as response:
                assert response.status == 200
                assert await response.read() == expected
    finally:
        await links.close()
        server.close()
        await server.wait_closed()
