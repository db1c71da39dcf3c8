"""A ``docker save`` archive written on the fly from an image in a registry.

``docker load`` reads ``manifest.json`` (``[{"Config", "RepoTags", "Layers"}]``), the image
config it names, and one file per layer; it decompresses a layer file itself, so each layer is
the registry's blob as it is (gzip or not) and its size is known before its bytes arrive. So
is the size of the whole archive (:func:`archive_size`), sent as ``Content-Length``.
"""

from __future__ import annotations

import json
import tarfile
from dataclasses import dataclass
from typing import Any

BLOCK = 512
END = b"\0" * (2 * BLOCK)
"""Two zero blocks end a tar archive."""
MTIME = 0


@dataclass(frozen=True)
class Member:
    name: str
    size: int


def header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    info.mtime = MTIME
    return info.tobuf(format=tarfile.USTAR_FORMAT)


def padding(size: int) -> bytes:
    return b"\0" * (-size % BLOCK)


def layer_name(digest: str) -> str:
    return f"{digest.split(':', 1)[1]}/layer.tar"


def config_name(digest: str) -> str:
    return f"{digest.split(':', 1)[1]}.json"


def load_manifest(manifest: dict[str, Any], tag: str) -> bytes:
    """The ``manifest.json`` that ``docker load`` reads, for a registry image ``manifest``."""
    entry = {"Config": config_name(manifest["config"]["digest"]), "RepoTags": [tag],
             "Layers": [layer_name(layer["digest"]) for layer in manifest["layers"]]}
    return json.dumps([entry]).encode()


def archive_size(members: list[Member]) -> int:
    return sum(BLOCK + m.size + len(padding(m.size)) for m in members) + len(END)
