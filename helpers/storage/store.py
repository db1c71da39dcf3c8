"""The user's objects in S3, as the file system sees them: one prefix, folders by ``/``.

:class:`S3Store` is the one implementation of the :class:`Store` seam. Paths are relative to
the user's prefix (``a/b.txt``; the root is ``""``); the key of a file is ``prefix + path``, a
folder may have a marker object ``prefix + path + "/"`` (so an empty folder persists).
A key under the prefix that is not a safe path (an empty, ``.`` or ``..`` part) is never shown:
:func:`helpers.storage.names.safe_name` is the one check, shared with the names the tool asks for.
"""

from __future__ import annotations

import errno
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import boto3
import botocore.credentials
import botocore.exceptions
import botocore.session
from boto3.s3.transfer import TransferConfig
from botocore.config import Config as BotoConfig

from helpers.storage.names import check_prefix, safe_name

log = logging.getLogger("dit4c.storage.s3")

MAX_KEY_BYTES = 1024
"""S3's limit on a key."""
PART_BYTES = 8 << 20
"""Multipart upload part and download chunk size."""
TRANSFER = TransferConfig(multipart_threshold=PART_BYTES, multipart_chunksize=PART_BYTES,
                          max_concurrency=4, use_threads=True)


class StoreError(Exception):
    """The store refused or failed an operation; ``code`` is the errno the tool should get."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class ObjectInfo:
    size: int
    etag: str
    mtime_ns: int


@dataclass
class Listing:
    """One folder's direct children as the store has them."""

    files: dict[str, ObjectInfo] = field(default_factory=dict)
    dirs: set[str] = field(default_factory=set)
    marker: bool = False
    """The folder has its own marker object."""


class Store(Protocol):
    """The user's objects under one prefix; every path is relative to it and safe."""

    def list_dir(self, path: str) -> Listing: ...
    def usage(self) -> int:
        """Bytes stored under the prefix (every object)."""
    def read(self, path: str, start: int, end: int, *, whole: bool = False) -> bytes:
        """Bytes ``[start, end)`` of the object at ``path`` (``whole``: that is all of it)."""
    def stream(self, path: str, start: int, piece: int) -> Iterator[bytes]:
        """The object at ``path`` from ``start`` to its end, in pieces of ``piece`` bytes."""
    def put(self, path: str, source: Path) -> ObjectInfo: ...
    def put_marker(self, path: str) -> None: ...
    def delete(self, path: str) -> None: ...
    def delete_marker(self, path: str) -> None: ...
    def copy(self, source: str, target: str) -> None: ...
    def walk(self, path: str) -> list[tuple[str, bool]]:
        """Every object under folder ``path``: (its path relative to ``path``, is a marker)."""


def _errno_of(exc: Exception) -> int:
    if isinstance(exc, botocore.exceptions.ClientError):
        code = exc.response.get("Error", {}).get("Code", "")
        if code in ("NoSuchKey", "404", "NotFound"):
            return errno.ENOENT
        if code in ("AccessDenied", "403", "InvalidAccessKeyId", "ExpiredToken",
                    "SignatureDoesNotMatch", "InvalidToken"):
            return errno.EACCES
    return errno.EIO


class Credentials:
    """The current STS credentials: those the helper started with, replaced by the file that
    the node daemon rewrites before they expire (``python3 -m helpers.storage credentials``)."""

    def __init__(self, initial: dict[str, str], path: Path, key: str | None = None) -> None:
        self._initial = initial
        self.path = path
        self._key = key

    def current(self) -> dict[str, str]:
        try:
            found = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return self._initial
        if self._key is not None and isinstance(found, dict):
            found = found.get(self._key)
        if not isinstance(found, dict):
            return self._initial
        if _expiry(found) >= _expiry(self._initial):
            return found
        return self._initial

    def expired(self, margin: float = 0.0) -> bool:
        """True if the current credentials (with a known expiry) end within ``margin``."""
        expiry = _expiry(self.current())
        return bool(expiry) and expiry <= time.time() + margin

    def for_botocore(self) -> dict[str, str]:
        creds = self.current()
        expiry = creds.get("expiration") or datetime.fromtimestamp(
            time.time() + 3600, UTC).isoformat()
        return {"access_key": creds.get("access_key_id", ""),
                "secret_key": creds.get("secret_access_key", ""),
                "token": creds.get("session_token") or "",
                "expiry_time": expiry}


def _expiry(creds: dict[str, Any]) -> float:
    text = creds.get("expiration")
    if not isinstance(text, str):
        return 0.0
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


class _FileProvider(botocore.credentials.CredentialProvider):  # type: ignore[misc]
    """botocore's refreshing credentials over :class:`Credentials`: within 15 minutes of
    expiry (botocore's advisory window) every call reads the file again, and the node daemon
    renews at half the credentials' lifetime, so the new ones are there first."""

    METHOD = "dit4c-storage"

    def __init__(self, credentials: Credentials) -> None:
        super().__init__()
        self._credentials = credentials

    def load(self) -> botocore.credentials.RefreshableCredentials:
        return botocore.credentials.RefreshableCredentials.create_from_metadata(
            metadata=self._credentials.for_botocore(),
            refresh_using=self._credentials.for_botocore, method=self.METHOD)


CLIENT_CONFIG = BotoConfig(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5,
                           read_timeout=60, max_pool_connections=16)


def warm_session() -> boto3.session.Session:
    """A boto3 session that has made one S3 client already: botocore loaded the service's
    model and endpoint rules (60-70 ms), so :class:`S3Store`'s client over it takes ~10 ms.
    A pooled helper makes it before its bind. One boto3 session per botocore session: a
    second one over the same botocore session injects the S3 methods twice and fails."""
    session = boto3.session.Session(botocore_session=botocore.session.get_session())
    # Explicit keys: the credential chain is not asked (it keeps what it finds).
    session.client("s3", endpoint_url="http://warm.invalid", region_name="us-east-1",
                   aws_access_key_id="warm", aws_secret_access_key="warm",  # noqa: S106
                   config=CLIENT_CONFIG)
    return session


class S3Store:
    """Objects under ``prefix`` of ``bucket`` through boto3, with refreshable credentials
    (``session``: one from :func:`warm_session`, used by this store only)."""

    def __init__(self, *, bucket: str, prefix: str, credentials: Credentials,
                 endpoint_url: str | None, region: str,
                 session: boto3.session.Session | None = None) -> None:
        self.bucket = bucket
        self.prefix = check_prefix(prefix)
        if session is None:
            session = boto3.session.Session(botocore_session=botocore.session.get_session())
        session._session.get_component("credential_provider").insert_before(
            "env", _FileProvider(credentials))
        self._client: Any = session.client("s3", endpoint_url=endpoint_url or None,
                                           region_name=region, config=CLIENT_CONFIG)

    def key(self, path: str) -> str:
        key = self.prefix + path
        if len(key.encode()) > MAX_KEY_BYTES:
            raise StoreError(errno.ENAMETOOLONG, f"key of {path!r} is too long for S3")
        return key

    def _call(self, what: str, fn: Callable[..., Any], **kwargs: Any) -> Any:
        try:
            return fn(**kwargs)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise StoreError(_errno_of(exc), f"{what}: {exc}") from exc
        except RuntimeError as exc:  # botocore: refreshed credentials that are still expired
            raise StoreError(errno.EACCES, f"{what}: the storage credentials expired "
                                           f"and none came to replace them ({exc})") from exc

    def _pages(self, prefix: str, delimiter: str | None) -> Iterator[dict[str, Any]]:
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
        if delimiter:
            kwargs["Delimiter"] = delimiter
        while True:
            page = self._call(f"list {prefix}", self._client.list_objects_v2, **kwargs)
            yield page
            if not page.get("IsTruncated"):
                return
            kwargs["ContinuationToken"] = page["NextContinuationToken"]

    def list_dir(self, path: str) -> Listing:
        base = self.key(path + "/" if path else "")
        listing = Listing()
        for page in self._pages(base, "/"):
            for item in page.get("Contents", []):
                name = str(item["Key"])[len(base):]
                if name == "":
                    listing.marker = True
                elif safe_name(name):
                    stamp = item["LastModified"]
                    listing.files[name] = ObjectInfo(
                        int(item["Size"]), str(item.get("ETag", "")),
                        int(stamp.timestamp() * 1_000_000_000))
                else:
                    log.warning("not shown: object key %r is not a safe path", item["Key"])
            for common in page.get("CommonPrefixes", []):
                name = str(common["Prefix"])[len(base):-1]
                if safe_name(name):
                    listing.dirs.add(name)
                else:
                    log.warning("not shown: folder %r is not a safe path", common["Prefix"])
        # A name that is both a file and a folder shows as the folder.
        for name in listing.dirs:
            listing.files.pop(name, None)
        return listing

    def usage(self) -> int:
        return sum(int(item["Size"]) for page in self._pages(self.prefix, None)
                   for item in page.get("Contents", []))

    def read(self, path: str, start: int, end: int, *, whole: bool = False) -> bytes:
        if end <= start:
            return b""
        # A whole object is asked for without a range (a small file's only chunk).
        ranged = {} if start == 0 and whole else {"Range": f"bytes={start}-{end - 1}"}
        answer = self._call(f"get {path}", self._client.get_object, Bucket=self.bucket,
                            Key=self.key(path), **ranged)
        try:
            data: bytes = answer["Body"].read()
        except (botocore.exceptions.BotoCoreError, OSError) as exc:
            raise StoreError(errno.EIO, f"get {path}: {exc}") from exc
        if len(data) != end - start:
            raise StoreError(errno.EIO, f"get {path}: {len(data)} of {end - start} bytes "
                                        "(changed meanwhile?)")
        return data

    def stream(self, path: str, start: int, piece: int) -> Iterator[bytes]:
        answer = self._call(f"get {path}", self._client.get_object, Bucket=self.bucket,
                            Key=self.key(path), Range=f"bytes={start}-")
        body = answer["Body"]
        try:
            yield from body.iter_chunks(piece)
        except (botocore.exceptions.BotoCoreError, OSError) as exc:
            raise StoreError(errno.EIO, f"get {path}: {exc}") from exc
        finally:
            body.close()

    def put(self, path: str, source: Path) -> ObjectInfo:
        key = self.key(path)
        size = source.stat().st_size
        if size < PART_BYTES:
            answer = self._call(f"put {path}", self._client.put_object, Bucket=self.bucket,
                                Key=key, Body=source.read_bytes())
            return ObjectInfo(size, str(answer.get("ETag", "")), time.time_ns())
        self._call(f"upload {path}", self._client.upload_file, Filename=str(source),
                   Bucket=self.bucket, Key=key, Config=TRANSFER)
        head = self._call(f"head {path}", self._client.head_object, Bucket=self.bucket,
                          Key=key)
        return ObjectInfo(int(head["ContentLength"]), str(head.get("ETag", "")),
                          int(head["LastModified"].timestamp() * 1_000_000_000))

    def put_marker(self, path: str) -> None:
        self._call(f"mkdir {path}", self._client.put_object, Bucket=self.bucket,
                   Key=self.key(path + "/"), Body=b"")

    def delete(self, path: str) -> None:
        self._call(f"delete {path}", self._client.delete_object, Bucket=self.bucket,
                   Key=self.key(path))

    def delete_marker(self, path: str) -> None:
        self._call(f"rmdir {path}", self._client.delete_object, Bucket=self.bucket,
                   Key=self.key(path + "/"))

    def copy(self, source: str, target: str) -> None:
        self._call(f"copy {source}", self._client.copy, Bucket=self.bucket,
                   Key=self.key(target), CopySource={"Bucket": self.bucket,
                                                     "Key": self.key(source)},
                   Config=TRANSFER)

    def walk(self, path: str) -> list[tuple[str, bool]]:
        base = self.key(path + "/")
        found = []
        for page in self._pages(base, None):
            for item in page.get("Contents", []):
                rel = str(item["Key"])[len(base):]
                if rel == "":
                    continue
                marker = rel.endswith("/")
                parts = (rel[:-1] if marker else rel).split("/")
                if all(safe_name(p) for p in parts):
                    found.append((rel[:-1] if marker else rel, marker))
        return found
