"""A small client of the registry HTTP API (Distribution v2), enough to push one image.

Standard library only (the helper runs on Debian's Python without extra packages), one
keep-alive connection, a bearer token on every request. Blobs are uploaded in three requests:
``POST .../blobs/uploads/`` (or a cross-repository mount), one streamed ``PATCH`` with the whole
content (chunked transfer encoding, so its digest is computed on the way), ``PUT ?digest=``.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import urlencode, urlsplit


class ImageServerError(Exception):
    """The registry refused or failed; the message is for people."""

    def __init__(self, message: str, *, status: int | None = None,
                 retry: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.retry = retry


TIMEOUT = 120.0


class Registry:
    """The registry at ``base_url`` (``http(s)://host[:port]``), acting with ``token``."""

    def __init__(self, base_url: str, token: str) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ImageServerError(f"registry URL {base_url!r} is not http(s)://host[:port]")
        self.base_url = base_url.rstrip("/")
        self._scheme = parts.scheme
        self._host = parts.hostname
        self._port = parts.port
        self._token = token
        self._connection: http.client.HTTPConnection | None = None

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def _connect(self) -> http.client.HTTPConnection:
        if self._connection is None:
            kind = http.client.HTTPSConnection if self._scheme == "https" \
                else http.client.HTTPConnection
            self._connection = kind(self._host, self._port, timeout=TIMEOUT)
        return self._connection

    def request(self, method: str, path: str, *, body: bytes | Iterable[bytes] | None = None,
                headers: Mapping[str, str] | None = None, expect: tuple[int, ...] = (200,),
                ) -> tuple[int, dict[str, str], bytes]:
        """One request (``path`` absolute, or a full URL the registry gave back); returns
        (status, headers, body) for a status in ``expect``, else :class:`ImageServerError`."""
        if path.startswith(("http://", "https://")):
            parts = urlsplit(path)
            path = parts.path + (f"?{parts.query}" if parts.query else "")
        sent = {"Authorization": f"Bearer {self._token}", **(headers or {})}
        chunked = body is not None and not isinstance(body, bytes)
        try:
            connection = self._connect()
            connection.request(method, path, body=body, headers=sent, encode_chunked=chunked)
            response = connection.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            raise ImageServerError(f"cannot reach the image server at {self.base_url}: {exc}",
                                retry=True) from exc
        answer = {k.lower(): v for k, v in response.getheaders()}
        if response.status in expect:
            return response.status, answer, data
        if response.status in (401, 403):
            raise ImageServerError("the image server refused the push token (it may have "
                                "expired: save again)", status=response.status)
        raise ImageServerError(f"the image server answered {response.status} to {method} "
                            f"{path.split('?')[0]}: {_message(data)}", status=response.status,
                            retry=response.status >= 500)

    # -- what a push needs ---------------------------------------------------------------

    def manifest(self, repository: str, reference: str) -> tuple[str, dict[str, Any]]:
        """(media type, manifest) of ``repository:reference``."""
        _, headers, data = self.request("GET", f"/v2/{repository}/manifests/{reference}",
                                        headers={"Accept": ", ".join(MANIFEST_TYPES)})
        return headers.get("content-type", ""), json.loads(data)

    def blob(self, repository: str, digest: str) -> bytes:
        return self.request("GET", f"/v2/{repository}/blobs/{digest}")[2]

    def has_blob(self, repository: str, digest: str) -> bool:
        status, _, _ = self.request("HEAD", f"/v2/{repository}/blobs/{digest}",
                                    expect=(200, 404))
        return status == 200

    def mount(self, repository: str, digest: str, source: str) -> bool:
        """Link a blob of ``source`` into ``repository`` without uploading it; False when the
        registry started an ordinary upload instead (it is cancelled)."""
        query = urlencode({"mount": digest, "from": source})
        status, headers, _ = self.request("POST", f"/v2/{repository}/blobs/uploads/?{query}",
                                          expect=(201, 202))
        if status == 201:
            return True
        if "location" in headers:
            self.request("DELETE", headers["location"], expect=(204, 404))
        return False

    def upload(self, repository: str, chunks: Iterable[bytes],
               digest_of: Callable[[], str]) -> None:
        """Upload ``chunks`` as one blob; ``digest_of()`` gives its digest once they are
        consumed (the content is hashed on the way)."""
        _, headers, _ = self.request("POST", f"/v2/{repository}/blobs/uploads/",
                                     expect=(202,))
        location = headers["location"]
        _, headers, _ = self.request("PATCH", location, body=chunks, expect=(202,),
                                     headers={"Content-Type": "application/octet-stream"})
        location = headers["location"]
        separator = "&" if "?" in location else "?"
        self.request("PUT", f"{location}{separator}{urlencode({'digest': digest_of()})}",
                     expect=(201,), headers={"Content-Length": "0"}, body=b"")

    def put_manifest(self, repository: str, tag: str, media_type: str, body: bytes) -> str:
        _, headers, _ = self.request("PUT", f"/v2/{repository}/manifests/{tag}", body=body,
                                     headers={"Content-Type": media_type}, expect=(201,))
        return headers.get("docker-content-digest", "")


MANIFEST_TYPES = (
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)


def _message(data: bytes) -> str:
    try:
        errors = json.loads(data).get("errors") or []
        return "; ".join(str(e.get("message", e)) for e in errors) or data[:200].decode()
    except (ValueError, AttributeError, UnicodeDecodeError):
        return repr(data[:200])
