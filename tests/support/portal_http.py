"""Clients of the real portal over HTTP (:class:`tests.support.control_plane.ControlPlane`), as
the attack suite plays them: a browser, and a node holding its own key and queue credentials.

- :class:`PortalBrowser`: a ``requests`` session with the portal's cookies and the CSRF header
  its page sends; ``source`` connects from another loopback address (``127.0.0.2``...), so the
  portal sees another client address, as a pod or another machine would be.
- :class:`Node`: enrols with a join token, asks ``/api/nodes/{id}/credentials`` for its STS
  credentials (the real endpoint, the real session policy in moto), and puts messages on the
  events queue with them: signed as a real node signs them, or forged (another node's id,
  another key, no signature).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import boto3
import requests
from requests.adapters import HTTPAdapter

from protocol.messages import SIGNATURE_ATTRIBUTE, Message
from protocol.tokens import SigningKey, event_claims, node_claims
from tests.support.control_plane import ControlPlane

TIMEOUT = 15


class _FromAddress(HTTPAdapter):
    def __init__(self, source: str) -> None:
        self._source = source
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["source_address"] = (self._source, 0)
        super().init_poolmanager(*args, **kwargs)


class PortalBrowser:
    """A browser of the portal at ``url`` (cookies kept, CSRF token sent on changes)."""

    def __init__(self, url: str, *, source: str | None = None) -> None:
        self.url = url.rstrip("/")
        self.http = requests.Session()
        if source is not None:
            self.http.mount("http://", _FromAddress(source))
        self.csrf = ""

    def call(self, method: str, path: str, body: Any = None, **kwargs: Any
             ) -> requests.Response:
        headers = {"X-CSRF-Token": self.csrf} if self.csrf and method != "GET" else {}
        return self.http.request(method, self.url + path, json=body, timeout=TIMEOUT,
                                 allow_redirects=False,
                                 headers={**headers, **kwargs.pop("headers", {})}, **kwargs)

    def login(self, username: str, password: str) -> requests.Response:
        answer = self.call("POST", "/api/login", {"username": username, "password": password})
        if answer.status_code == 200:
            self.csrf = answer.json()["csrf_token"]
        return answer


@dataclass
class Node:
    """An enrolled node: its id, key and queue; ``sqs`` uses its own STS credentials."""

    plane: ControlPlane
    node_id: str
    key: SigningKey
    queue_url: str
    _sqs: Any = field(default=None, repr=False)

    @classmethod
    def enrol(cls, plane: ControlPlane, name: str, *, cpu: float = 2,
              memory_mb: int = 2048) -> Node:
        key = SigningKey.generate()
        answer = requests.post(plane.url + "/api/nodes/enroll", json={
            "join_token": plane.new_join_token(), "public_jwk": key.public_jwk(), "name": name,
            "cpu": cpu, "memory_mb": memory_mb}, timeout=TIMEOUT)
        assert answer.status_code == 201, answer.text
        enrolled = answer.json()
        return cls(plane, enrolled["node_id"], key, enrolled["queue_url"])

    def credentials(self) -> requests.Response:
        token = self.key.sign(node_claims(node_id=self.node_id))
        return requests.post(f"{self.plane.url}/api/nodes/{self.node_id}/credentials",
                             headers={"Authorization": f"Bearer {token}"}, timeout=TIMEOUT)

    @property
    def sqs(self) -> Any:
        """An SQS client with the node's own credentials (fetched once, as a node keeps them
        until they expire)."""
        if self._sqs is None:
            answer = self.credentials()
            assert answer.status_code == 200, answer.text
            creds = answer.json()
            self._sqs = boto3.client(
                "sqs", region_name=creds["region"], endpoint_url=creds["endpoint_url"],
                aws_access_key_id=creds["access_key_id"],
                aws_secret_access_key=creds["secret_access_key"],
                aws_session_token=creds["session_token"])
        return self._sqs

    def send(self, message: Message, *, signed_as: str | None = None,
             key: SigningKey | None = None, unsigned: bool = False) -> None:
        """Put ``message`` on the events queue with this node's credentials, signed by this
        node (or by ``key`` as node ``signed_as``: a forgery), or not at all."""
        body = message.encode()
        attributes = {} if unsigned else {SIGNATURE_ATTRIBUTE: {
            "DataType": "String", "StringValue": (key or self.key).sign(
                event_claims(node_id=signed_as or self.node_id, body=body))}}
        self.sqs.send_message(QueueUrl=self.plane.events_queue_url, MessageBody=body,
                              MessageAttributes=attributes)
