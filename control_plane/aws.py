"""AWS clients made lazily from one boto3 session (Lambda cold starts pay only for what is used).

``DIT4C_AWS_ENDPOINT_URL`` (see :mod:`control_plane.config`) points every client at one endpoint,
which is how the local stack and the tests reach moto.
"""

from __future__ import annotations

import threading
from typing import Any, Final

from control_plane.config import Config

SERVICES: Final = frozenset({"dynamodb", "sqs", "sns", "sts", "ssm"})
"""Every AWS service the functions call. The Lambda artifact carries only these services'
botocore models (``infra/package.py``), so a client of any other is refused here,
in every test, rather than on Lambda."""


class Clients:
    """``clients.get("sqs")``: one client per service, made on first use, shared afterwards."""

    def __init__(self, config: Config, session: Any = None) -> None:
        """``session``: a boto3 Session to share (tests: making one parses botocore's models)."""
        self._config = config
        self._clients: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._session: Any = session

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
        return self._session.client(
            service,
            endpoint_url=self._config.aws_endpoint_url,
            config=BotoConfig(retries={"max_attempts": 3, "mode": "standard"},
                              connect_timeout=5, read_timeout=20),
        )
