"""Where the local stack's AWS lives (moto's server), and boto3 clients for it."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Final

import boto3
from botocore.config import Config

ACCOUNT_ID: Final = "123456789012"
"""moto's default account: the account every local ARN is in."""

DEFAULT_REGION: Final = "us-east-1"

# moto accepts any credentials; these make it obvious in a log that nothing real is used.
LOCAL_ACCESS_KEY: Final = "local-stack-key"
LOCAL_SECRET_KEY: Final = "local-stack-secret"  # noqa: S105 - moto ignores it


_CLIENTS: dict[tuple[str, str, str], Any] = {}
_CLIENTS_LOCK = threading.Lock()


@dataclass(frozen=True)
class AwsEndpoint:
    """One endpoint URL for every AWS service (moto's server mode), with fixed local credentials.

    ``url=None`` makes clients with boto3's default endpoints: under moto's ``mock_aws`` (the
    functional tests of other parts) that is moto in-process, with no server at all.
    """

    url: str | None
    region: str = DEFAULT_REGION

    def client(self, service: str) -> Any:
        """A client of ``service``; one per endpoint and service, shared (clients are
        thread-safe, and making one costs a quarter of a second)."""
        if self.url is None:
            return self._new_client(service)  # under mock_aws: made inside the mock, not cached
        key = (self.url, self.region, service)
        with _CLIENTS_LOCK:
            if key not in _CLIENTS:
                _CLIENTS[key] = self._new_client(service)
            return _CLIENTS[key]

    def _new_client(self, service: str) -> Any:
        session = boto3.session.Session(
            aws_access_key_id=LOCAL_ACCESS_KEY,
            aws_secret_access_key=LOCAL_SECRET_KEY,
            region_name=self.region,
        )
        config = Config(retries={"mode": "standard", "max_attempts": 3}, connect_timeout=5)
        return session.client(service, endpoint_url=self.url, config=config)

    def environment(self) -> dict[str, str]:
        """What a process needs in its environment to reach this endpoint with boto3."""
        environment = {
            "AWS_ACCESS_KEY_ID": LOCAL_ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": LOCAL_SECRET_KEY,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_REGION": self.region,
        }
        if self.url is not None:
            environment["AWS_ENDPOINT_URL"] = self.url
            environment["DIT4C_AWS_ENDPOINT_URL"] = self.url
        return environment
