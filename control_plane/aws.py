"""AWS clients made lazily from one boto3 session (Lambda cold starts pay only for what is used).

``DIT4C_AWS_ENDPOINT_URL`` (see :mod:`control_plane.config`) points every client at one endpoint,
which is how the local stack and the tests reach moto.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any, Final

from control_plane.config import Config

SERVICES: Final = frozenset({"dynamodb", "sqs", "sns", "sts", "ssm", "events", "lambda"})
"""Every AWS service the functions call. The Lambda artifact carries only these services'
botocore models (``infra/package.py``), so a client of any other is refused here,
in every test, rather than on Lambda."""

BeforeCall = Callable[[str, str, Mapping[str, Any]], None]
"""Sees each call before it is sent: the service's IAM prefix (``dynamodb``, ``sqs`` ...), the
operation (``GetItem``) and its parameters as the caller gave them. Raising refuses the call
(a botocore ``ClientError``, as AWS answers one it does not allow). The tests hold every call to
the calling function's own policies this way (``tests/support/iam_gate.py``)."""


class Clients:
    """``clients.get("sqs")``: one client per service, made on first use, shared afterwards."""

    def __init__(self, config: Config, session: Any = None, *,
                 before_call: BeforeCall | None = None) -> None:
        """``session``: a boto3 Session to share (tests: making one parses botocore's models).
        ``before_call``: see :data:`BeforeCall` (none on Lambda)."""
        self._config = config
        self._clients: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._session: Any = session
        self._before_call = before_call

    def get(self, service: str) -> Any:
        if service not in SERVICES:
            raise ValueError(f"{service!r} is not in control_plane.aws.SERVICES")
        client = self._clients.get(service)
        if client is None:
            with self._lock:
                client = self._clients.get(service)
                if client is None:
                    client = self._make(service)
                    self._clients[service] = client
        return client

    def _make(self, service: str) -> Any:
        # boto3 costs ~150 ms to import: only requests that call AWS pay it.
        import boto3  # noqa: PLC0415
        from botocore.config import Config as BotoConfig  # noqa: PLC0415

        if self._session is None:
            self._session = boto3.session.Session(region_name=self._config.region)
        client = self._session.client(
            service,
            endpoint_url=self._config.aws_endpoint_url,
            config=BotoConfig(retries={"max_attempts": 3, "mode": "standard"},
                              connect_timeout=5, read_timeout=20),
        )
        if self._before_call is not None:
            _observe(client, self._before_call)
        return client


def _observe(client: Any, before_call: BeforeCall) -> None:
    prefix = client.meta.service_model.signing_name  # the IAM prefix: "events" for EventBridge

    def handler(params: Mapping[str, Any], model: Any, **_: Any) -> None:
        before_call(prefix, model.name, params)

    client.meta.events.register("before-parameter-build", handler)
