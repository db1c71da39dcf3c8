"""Which AWS calls change the state a snapshot holds, and such a call as a replayable record.

The journal (:mod:`infra.local.durable`) must hold exactly what :mod:`infra.local.snapshot`
holds, no more and no less, or replaying it over a snapshot would diverge: DynamoDB items, SSM
parameters, S3 objects and SQS queues (not their messages). :func:`effect` says, for one call:

- :attr:`Effect.CALL`: journal the call itself; replayed over the same state it does the same
  (item writes, parameter puts and deletes, object puts, copies and deletes, queue creation and
  attributes);
- :attr:`Effect.OBJECT`: journal the object the call produced, as a plain put (completing a
  multipart upload: its upload id is random, so the call could not be replayed, and the parts
  before it are not state a snapshot holds);
- ``None``: nothing to journal (reads, queue messages, provisioning of the template's resources,
  which happens again at every start).

A :class:`Call` is the WSGI request as moto's server saw it (method, path, query, headers, body),
so replaying one is handing moto the same request again.
"""

from __future__ import annotations

import enum
import io
import json
import struct
import sys
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import parse_qs

from werkzeug.test import create_environ

# moto's server keeps the original spelling of headers with underscores (S3 metadata) here.
PRESERVED_NAMES: Final = "moto.preserved_header_names"

DYNAMODB_WRITES: Final = frozenset({
    "PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem", "TransactWriteItems",
    "ExecuteStatement", "BatchExecuteStatement", "ExecuteTransaction",
})
SSM_WRITES: Final = frozenset({"PutParameter", "DeleteParameter", "DeleteParameters"})
SQS_WRITES: Final = frozenset({
    "CreateQueue", "DeleteQueue", "SetQueueAttributes", "TagQueue", "UntagQueue",
})
_TARGETS: Final = {"DynamoDB_20120810": DYNAMODB_WRITES, "AmazonSSM": SSM_WRITES,
                   "AmazonSQS": SQS_WRITES}
_QUERY_PROTOCOL: Final = {"sqs": SQS_WRITES, "ssm": SSM_WRITES}
# Object subresources a snapshot does not hold (it keeps body, type and metadata).
_S3_SUBRESOURCES: Final = frozenset({"tagging", "acl", "retention", "legal-hold", "torrent"})
_KEPT_ENVIRON: Final = frozenset({
    "REQUEST_METHOD", "PATH_INFO", "QUERY_STRING", "CONTENT_TYPE", "RAW_URI", "REQUEST_URI",
})
# Headers of the transport, not of the call: the body is replayed whole, with its length.
_DROPPED_HEADERS: Final = frozenset({
    "HTTP_EXPECT", "HTTP_TRANSFER_ENCODING", "HTTP_CONNECTION", "HTTP_ACCEPT_ENCODING",
    "HTTP_AMZ_SDK_INVOCATION_ID", "HTTP_AMZ_SDK_REQUEST", "HTTP_CONTENT_LENGTH",
})
_META: Final = struct.Struct(">I")


class Effect(enum.Enum):
    CALL = "call"
    OBJECT = "object"


@dataclass(frozen=True)
class Call:
    """One request to moto: the environ entries that make it (strings), the original spelling
    of underscored headers, and the body."""

    environ: dict[str, str]
    names: dict[str, str]
    body: bytes

    @classmethod
    def read(cls, environ: dict[str, Any]) -> Call:
        """The call in a server's WSGI environ; reads the body (whole, even when chunked)."""
        stream = environ["wsgi.input"]
        length = environ.get("CONTENT_LENGTH") or ""
        if length.isdigit():
            body = stream.read(int(length)) if int(length) else b""
        elif environ.get("wsgi.input_terminated"):
            body = stream.read()
        else:
            body = b""
        kept = {
            key: value for key, value in environ.items()
            if isinstance(value, str)
            and (key in _KEPT_ENVIRON or key.startswith("HTTP_"))
            and key not in _DROPPED_HEADERS
        }
        names = environ.get(PRESERVED_NAMES) or {}
        return cls(kept, {k: v for k, v in names.items() if k in kept}, body)

    @property
    def method(self) -> str:
        return self.environ.get("REQUEST_METHOD", "GET")

    def to_environ(self) -> dict[str, Any]:
        """A fresh WSGI environ for this call (its body readable once more)."""
        environ: dict[str, Any] = create_environ()
        for key in [k for k in environ if k.startswith("HTTP_")]:
            del environ[key]
        environ.update(self.environ)
        environ["CONTENT_LENGTH"] = str(len(self.body))
        environ["wsgi.input"] = io.BytesIO(self.body)
        environ["wsgi.errors"] = sys.stderr
        environ[PRESERVED_NAMES] = dict(self.names)
        return environ

    def encode(self) -> bytes:
        meta = json.dumps({"environ": self.environ, "names": self.names},
                          separators=(",", ":")).encode()
        return _META.pack(len(meta)) + meta + self.body

    @classmethod
    def decode(cls, payload: bytes) -> Call:
        (size,) = _META.unpack_from(payload)
        meta = json.loads(payload[_META.size:_META.size + size])
        return cls(dict(meta["environ"]), dict(meta["names"]), payload[_META.size + size:])

    def read_back(self) -> Call:
        """A GET of this call's path: no query, no body, the same host and credentials (to read
        back the object a multipart upload made)."""
        environ = {k: v for k, v in self.environ.items()
                   if k in ("PATH_INFO", "HTTP_HOST", "HTTP_AUTHORIZATION", "HTTP_X_AMZ_DATE")}
        environ.update(REQUEST_METHOD="GET", QUERY_STRING="",
                       HTTP_X_AMZ_CONTENT_SHA256="UNSIGNED-PAYLOAD")
        for raw in ("RAW_URI", "REQUEST_URI"):
            if raw in self.environ:
                environ[raw] = self.environ[raw].split("?", 1)[0]
        return Call(environ, {}, b"")

    def describe(self) -> str:
        """One line for a log: method, path and operation."""
        target = self.environ.get("HTTP_X_AMZ_TARGET", "")
        return " ".join(p for p in (self.method, self.environ.get("PATH_INFO", "/"), target) if p)


def effect(call: Call) -> Effect | None:
    """What journalling ``call`` takes; see the module docstring."""
    target = call.environ.get("HTTP_X_AMZ_TARGET", "")
    if target:
        prefix, _, operation = target.partition(".")
        writes = _TARGETS.get(prefix)
        return Effect.CALL if writes is not None and operation in writes else None
    service = _signing_service(call.environ.get("HTTP_AUTHORIZATION", ""))
    if service == "s3":
        return _s3_effect(call)
    if service in _QUERY_PROTOCOL and call.environ.get("CONTENT_TYPE", "").startswith(
        "application/x-www-form-urlencoded"
    ):
        action = parse_qs(call.body.decode("utf-8", "replace")).get("Action", [""])[0]
        return Effect.CALL if action in _QUERY_PROTOCOL[service] else None
    return None


def _signing_service(authorization: str) -> str | None:
    """The service of a SigV4 ``Authorization`` header's credential scope."""
    try:
        scope = authorization.split(",", maxsplit=1)[0].split()[1]
        return scope.split("/")[3].lower()
    except IndexError:
        return None


def _s3_effect(call: Call) -> Effect | None:
    # Path-style addressing: every client of the stack names moto by IP address.
    _, _, key = call.environ.get("PATH_INFO", "").lstrip("/").partition("/")
    query = parse_qs(call.environ.get("QUERY_STRING", ""), keep_blank_values=True)
    method = call.method
    if not key:
        return Effect.CALL if method == "POST" and "delete" in query else None
    if "uploadId" in query:
        return Effect.OBJECT if method == "POST" else None
    if method in ("PUT", "DELETE") and not _S3_SUBRESOURCES & query.keys() \
            and "uploads" not in query:
        return Effect.CALL
    return None


def object_put(read: Call, headers: list[tuple[str, str]], body: bytes) -> Call:
    """A plain put of the object that ``read`` (a :meth:`Call.read_back`) answered with
    ``headers`` and ``body``: what completing a multipart upload made, as a replayable call."""
    environ = {**read.environ, "REQUEST_METHOD": "PUT"}
    names: dict[str, str] = {}
    for name, value in headers:
        lowered = name.lower()
        if lowered == "content-type":
            environ["CONTENT_TYPE"] = value
        elif lowered.startswith("x-amz-meta-"):
            key = "HTTP_" + name.upper().replace("-", "_")
            environ[key] = value
            if "_" in name:
                names[key] = name
    return Call(environ, names, body)
