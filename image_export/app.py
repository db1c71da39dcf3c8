"""The exporter's HTTP side: ``GET /export/<token>`` streams a ``docker save`` tar.

Nothing is built in memory but the image's manifest and config: each layer goes from the image
server to the client as it arrives, its digest checked on the way (a mismatch, or the image
server failing mid-way, cuts the connection, so the client sees an incomplete download, never
a damaged archive that looks whole). The first bytes leave after two requests to the image
server (manifest and config).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import jwt
from aiohttp import web

from image_export import tar
from protocol.errors import RegistryError
from protocol.registry import DIGEST, EXPORT_CLAIM, check_repository

log = logging.getLogger("dit4c.export")

MANIFEST_TYPES = ("application/vnd.oci.image.manifest.v1+json",
                  "application/vnd.docker.distribution.manifest.v2+json")
CHUNK = 1 << 20
SESSION_KEY = web.AppKey("session", aiohttp.ClientSession)
REGISTRY_KEY = web.AppKey("registry", str)


class LinkError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def image_of(token: str) -> tuple[str, str, str]:
    """(repository, digest, file name) the link's token names; its signature is the image
    server's to check."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.exceptions.InvalidTokenError:
        raise LinkError(400, "This is not an export link.") from None
    wanted = claims.get(EXPORT_CLAIM)
    if not isinstance(wanted, dict):
        raise LinkError(400, "This is not an export link.")
    repository, digest = wanted.get("repository"), wanted.get("digest")
    name = wanted.get("name") or "image"
    try:
        check_repository(str(repository))
    except RegistryError:
        raise LinkError(400, "This export link names no image.") from None
    if not isinstance(digest, str) or not DIGEST.fullmatch(digest):
        raise LinkError(400, "This export link names no image.")
    return str(repository), digest, str(name)[:100]


def slug(name: str) -> str:
    """A name Docker takes as one lower-case repository path component."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:60] or "image"


class Export:
    def __init__(self, session: aiohttp.ClientSession, registry: str, token: str,
                 repository: str) -> None:
        self._session = session
        self._base = f"{registry}/v2/{repository}"
        self._headers = {"Authorization": f"Bearer {token}"}

    async def small(self, path: str, digest: str, accept: str | None = None) -> bytes:
        headers = {**self._headers, **({"Accept": accept} if accept else {})}
        async with self._session.get(f"{self._base}/{path}", headers=headers) as response:
            _refusal(response.status)
            body = await response.read()
        if f"sha256:{hashlib.sha256(body).hexdigest()}" != digest:
            raise LinkError(502, "The image server sent something else than the image.")
        return body

    async def stream(self, digest: str, size: int, into: web.StreamResponse) -> None:
        check = hashlib.sha256()
        sent = 0
        async with self._session.get(f"{self._base}/blobs/{digest}",
                                     headers=self._headers) as response:
            _refusal(response.status)
            async for chunk in response.content.iter_chunked(CHUNK):
                check.update(chunk)
                sent += len(chunk)
                if sent > size:
                    break
                await into.write(chunk)
        if sent != size or f"sha256:{check.hexdigest()}" != digest:
            raise ConnectionAbortedError(f"layer {digest} did not arrive whole")


def _refusal(status: int) -> None:
    if status in (401, 403):
        raise LinkError(403, "This export link has expired or is not valid.")
    if status == 404:
        raise LinkError(404, "This image no longer exists.")
    if status != 200:
        raise LinkError(502, f"The image server answered {status}.")


async def export(request: web.Request) -> web.StreamResponse:
    token = request.match_info["token"]
    try:
        repository, digest, name = image_of(token)
        source = Export(request.app[SESSION_KEY], request.app[REGISTRY_KEY], token, repository)
        manifest: dict[str, Any] = json.loads(await source.small(
            f"manifests/{digest}", digest, ", ".join(MANIFEST_TYPES)))
        config_digest = manifest["config"]["digest"]
        config = await source.small(f"blobs/{config_digest}", config_digest)
    except LinkError as exc:
        return web.Response(status=exc.status, text=str(exc) + "\n")
    except (aiohttp.ClientError, OSError) as exc:
        log.warning("export of %s@%s: image server unreachable: %s", repository, digest, exc)
        return web.Response(status=502, text="The image server cannot be reached.\n")
    manifest_json = tar.load_manifest(manifest, f"dit4c/{slug(name)}:saved")
    layers = [(layer["digest"], int(layer["size"])) for layer in manifest["layers"]]
    members = [tar.Member("manifest.json", len(manifest_json)),
               tar.Member(tar.config_name(config_digest), len(config)),
               *(tar.Member(tar.layer_name(d), s) for d, s in layers)]
    response = web.StreamResponse(headers={
        "Content-Type": "application/x-tar",
        "Content-Length": str(tar.archive_size(members)),
        "Content-Disposition": f'attachment; filename="{slug(name)}.tar"',
        "Cache-Control": "no-store"})
    await response.prepare(request)
    for member, body in zip(members[:2], (manifest_json, config), strict=True):
        await response.write(tar.header(member.name, member.size) + body
                             + tar.padding(member.size))
    for (layer, size), member in zip(layers, members[2:], strict=True):
        await response.write(tar.header(member.name, size))
        try:
            await source.stream(layer, size, response)
        except (LinkError, aiohttp.ClientError, ConnectionAbortedError) as exc:
            log.warning("export of %s@%s cut: %s", repository, digest, exc)
            raise ConnectionResetError(str(exc)) from None
        await response.write(tar.padding(size))
    await response.write(tar.END)
    await response.write_eof()
    log.info("exported %s@%s (%d layers)", repository, digest, len(layers))
    return response


async def health(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


def make_app(registry_url: str) -> web.Application:
    app = web.Application()
    app[REGISTRY_KEY] = registry_url.rstrip("/")

    async def session(app: web.Application) -> AsyncIterator[None]:
        app[SESSION_KEY] = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(
            total=None, sock_connect=10, sock_read=120))
        yield
        await app[SESSION_KEY].close()

    app.cleanup_ctx.append(session)
    app.router.add_get("/export/{token}", export)
    app.router.add_get("/health", health)
    return app
