"""Push one committed image, laid out as ``docker save`` writes it, to the image server.

The node daemon has put the image in :data:`protocol.pod.UPLOAD_DIR` (``manifest.json``, the
image config, one ``layer.tar`` per layer). Pushing it:

1. the layers the image shares with the image it was launched from (``source``: same diff id)
   are **mounted** from the source repository, not uploaded: a saved image based on a large
   tool image costs only its own top layer;
2. every other layer is uploaded **compressed** (``gzip``: level 1, 1 MiB blocks compressed in
   parallel, one gzip member each, which every gzip reader accepts as one stream), its digest
   computed on the way; or as is (``none``), when its digest is its diff id and a layer the
   registry already has is skipped;
3. the config, then an OCI image manifest under ``tag``; the registry's digest of it is the
   image's identity (the saved image is pulled by that digest).

Deterministic (no timestamps in the gzip members), so a retried push produces the same digests.
Transient failures (connection, 5xx) are retried a few times per blob.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from helpers.upload.registry import ImageServerError, Registry
from protocol.errors import RegistryError
from protocol.registry import DIGEST, check_repository

log = logging.getLogger("dit4c.upload")

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
_AS_OCI = {
    "application/vnd.docker.image.rootfs.diff.tar.gzip": OCI_LAYER_GZIP,
    "application/vnd.docker.image.rootfs.diff.tar": OCI_LAYER,
}
BLOCK = 1 << 20
GZIP_LEVEL = 1
ATTEMPTS = 3
COMPRESSIONS = ("gzip", "none")

Progress = Callable[[int], None]


class UploadError(Exception):
    """The push failed; the message says why, for people."""


@dataclass(frozen=True)
class UploadSettings:
    registry_url: str
    repository: str
    tag: str
    token: str
    compression: str = "gzip"
    source: tuple[str, str] | None = None
    """(repository, digest or tag) of the image the instance was launched from."""

    @classmethod
    def from_json(cls, text: str, name: str) -> UploadSettings:
        try:
            raw = json.loads(text)
        except ValueError:
            raise UploadError(f"{name} must be a JSON object") from None
        if not isinstance(raw, dict):
            raise UploadError(f"{name} must be a JSON object")
        for key in ("registry_url", "repository", "tag", "token"):
            if not isinstance(raw.get(key), str) or not raw[key]:
                raise UploadError(f"{name}: {key} must be a non-empty string")
        compression = raw.get("compression", "gzip")
        if compression not in COMPRESSIONS:
            raise UploadError(f"{name}: compression must be one of {', '.join(COMPRESSIONS)}")
        source = raw.get("source")
        pair = None
        if source is not None:
            if not isinstance(source, dict) or not isinstance(source.get("repository"), str) \
                    or not isinstance(source.get("reference"), str):
                raise UploadError(f"{name}: source must be {{\"repository\", \"reference\"}}")
            pair = (source["repository"], source["reference"])
        try:
            check_repository(raw["repository"])
        except RegistryError as exc:
            raise UploadError(f"{name}: {exc}") from None
        return cls(raw["registry_url"], raw["repository"], raw["tag"], raw["token"],
                   compression, pair)


@dataclass(frozen=True)
class Layer:
    diff_id: str
    path: Path
    size: int


def read_image(directory: Path) -> tuple[bytes, list[Layer]]:
    """The config bytes and the layers (bottom first) of a ``docker save`` layout."""
    try:
        entries = json.loads((directory / "manifest.json").read_text())
        entry = entries[0]
        config = (directory / entry["Config"]).read_bytes()
        diff_ids = json.loads(config)["rootfs"]["diff_ids"]
    except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
        raise UploadError(f"the saved image in {directory} is incomplete: {exc!r}") from None
    paths = [directory / name for name in entry["Layers"]]
    if len(paths) != len(diff_ids):
        raise UploadError(f"the saved image has {len(paths)} layers but its config lists "
                          f"{len(diff_ids)}")
    return config, [Layer(d, p, p.stat().st_size) for d, p in zip(diff_ids, paths, strict=True)]


def source_layers(registry: Registry, source: tuple[str, str]) -> dict[str, dict[str, Any]]:
    """diff id -> layer descriptor of the source image (empty when it cannot be read)."""
    repository, reference = source
    try:
        _, manifest = registry.manifest(repository, reference)
        config = json.loads(registry.blob(repository, manifest["config"]["digest"]))
        diff_ids = config["rootfs"]["diff_ids"]
        layers = manifest["layers"]
    except (ImageServerError, ValueError, KeyError, TypeError) as exc:
        log.warning("source image %s (%s) unreadable, uploading every layer: %s",
                    repository, reference, exc)
        return {}
    if len(diff_ids) != len(layers):
        return {}
    return dict(zip(diff_ids, layers, strict=True))


class _Meter:
    """Bytes read of what is to be uploaded, reported as a percentage when it moves."""

    def __init__(self, total: int, progress: Progress) -> None:
        self.total, self.done, self._progress, self._last = max(total, 1), 0, progress, -1

    def add(self, count: int) -> None:
        self.done += count
        percent = min(99, self.done * 100 // self.total)
        if percent != self._last:
            self._last = percent
            self._progress(percent)


def _blocks(path: Path, meter: _Meter) -> Iterator[bytes]:
    with open(path, "rb") as handle:
        while block := handle.read(BLOCK):
            meter.add(len(block))
            yield block


def _gzip_blocks(path: Path, meter: _Meter, workers: int) -> Iterator[bytes]:
    """Each block compressed in a thread (zlib lets go of the GIL), in order."""
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="gzip") as pool:
        pending: deque[Future[bytes]] = deque()
        for block in _blocks(path, meter):
            pending.append(pool.submit(gzip.compress, block, GZIP_LEVEL, mtime=0))
            while len(pending) > 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


class _Hashed:
    """Chunks passed through, their sha256 and length kept."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._hash = hashlib.sha256()
        self.size = 0

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._chunks:
            self._hash.update(chunk)
            self.size += len(chunk)
            yield chunk

    def digest(self) -> str:
        return f"sha256:{self._hash.hexdigest()}"


T = TypeVar("T")


def _retrying(what: str, attempt: Callable[[], T]) -> T:
    for number in range(1, ATTEMPTS + 1):
        try:
            return attempt()
        except ImageServerError as exc:
            if not exc.retry or number == ATTEMPTS:
                raise UploadError(str(exc)) from None
            log.warning("%s failed (attempt %d of %d), retrying: %s", what, number, ATTEMPTS,
                        exc)
            time.sleep(number)
    raise AssertionError("unreachable")


def push(settings: UploadSettings, directory: Path, progress: Progress,
         registry: Registry | None = None, workers: int | None = None) -> dict[str, Any]:
    """Push the image in ``directory``; returns ``{"digest", "size"}`` (size: bytes stored)."""
    registry = registry or Registry(settings.registry_url, settings.token)
    try:
        return _push(settings, directory, progress, registry,
                     workers or max(1, min(4, os.cpu_count() or 1)))
    finally:
        registry.close()


def _push(settings: UploadSettings, directory: Path, progress: Progress, registry: Registry,
          workers: int) -> dict[str, Any]:
    repository = settings.repository
    config, layers = read_image(directory)
    source = settings.source
    known = source_layers(registry, source) if source else {}
    meter = _Meter(sum(layer.size for layer in layers if layer.diff_id not in known), progress)
    descriptors = []
    for layer in layers:
        found = known.get(layer.diff_id)
        if found is not None and source is not None and _retrying(
                f"mounting {layer.diff_id[:19]}",
                partial(registry.mount, repository, found["digest"], source[0])):
            descriptors.append({"mediaType": _AS_OCI.get(found["mediaType"],
                                                         found["mediaType"]),
                                "digest": found["digest"], "size": found["size"]})
            continue
        descriptors.append(_retrying(f"uploading {layer.diff_id[:19]}", partial(
            _upload_layer, registry, settings, layer, meter, workers)))
    config_digest = f"sha256:{hashlib.sha256(config).hexdigest()}"
    _retrying("uploading the config",
              partial(_upload_bytes, registry, repository, config, config_digest))
    manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "config": {"mediaType": OCI_CONFIG, "digest": config_digest,
                           "size": len(config)},
                "layers": descriptors}
    body = json.dumps(manifest, separators=(",", ":")).encode()
    digest = f"sha256:{hashlib.sha256(body).hexdigest()}"
    answered = _retrying("storing the manifest",
                         lambda: registry.put_manifest(repository, settings.tag, OCI_MANIFEST,
                                                       body))
    if answered and answered != digest:
        raise UploadError(f"the image server stored the manifest as {answered}, not {digest}")
    progress(100)
    assert DIGEST.fullmatch(digest)
    return {"digest": digest, "size": len(config) + sum(d["size"] for d in descriptors)}


def _upload_bytes(registry: Registry, repository: str, data: bytes, digest: str) -> None:
    if not registry.has_blob(repository, digest):
        registry.upload(repository, iter([data]), lambda: digest)


def _upload_layer(registry: Registry, settings: UploadSettings, layer: Layer, meter: _Meter,
                  workers: int) -> dict[str, Any]:
    if settings.compression == "none":
        if registry.has_blob(settings.repository, layer.diff_id):
            meter.add(layer.size)
            return {"mediaType": OCI_LAYER, "digest": layer.diff_id, "size": layer.size}
        hashed = _Hashed(_blocks(layer.path, meter))
        registry.upload(settings.repository, hashed, hashed.digest)
        if hashed.digest() != layer.diff_id:
            raise ImageServerError(f"layer {layer.path.parent.name} does not match its diff id")
        return {"mediaType": OCI_LAYER, "digest": layer.diff_id, "size": hashed.size}
    hashed = _Hashed(_gzip_blocks(layer.path, meter, workers))
    registry.upload(settings.repository, hashed, hashed.digest)
    return {"mediaType": OCI_LAYER_GZIP, "digest": hashed.digest(), "size": hashed.size}
