"""The storage helper's settings: the start command's ``storage`` object, by the name
``protocol.pod.ENV_STORAGE`` in the environment (read once and checked before anything is
mounted) or in a pooled helper's bind (``protocol.sandbox``)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from helpers.storage.names import check_prefix
from protocol.pod import ENV_STORAGE


class ConfigError(Exception):
    """A setting is missing or malformed (the helper exits with status 2, naming it)."""


@dataclass(frozen=True)
class StorageConfig:
    bucket: str
    prefix: str
    credentials: dict[str, str]
    endpoint_url: str | None
    region: str
    quota_bytes: int | None

    @classmethod
    def from_env(cls, env: dict[str, str]) -> StorageConfig:
        try:
            raw = json.loads(env.get(ENV_STORAGE, ""))
        except ValueError:
            raise ConfigError(f"{ENV_STORAGE} must be a JSON object") from None
        if not isinstance(raw, dict) or raw.get("kind") != "s3":
            raise ConfigError(f'{ENV_STORAGE} must be a JSON object with kind "s3"')
        bucket = _string(raw, "bucket")
        try:
            prefix = check_prefix(_string(raw, "prefix"))
        except ValueError as exc:
            raise ConfigError(f"{ENV_STORAGE}: {exc}") from None
        credentials = raw.get("credentials")
        if not isinstance(credentials, dict) or not all(
                isinstance(v, str) for v in credentials.values()):
            raise ConfigError(f"{ENV_STORAGE}: credentials must be an object of strings")
        for name in ("access_key_id", "secret_access_key"):
            if not credentials.get(name):
                raise ConfigError(f"{ENV_STORAGE}: credentials.{name} is missing")
        endpoint = raw.get("endpoint_url")
        if endpoint is not None and (not isinstance(endpoint, str)
                                     or not endpoint.startswith(("http://", "https://"))):
            raise ConfigError(f"{ENV_STORAGE}: endpoint_url must be an http(s) URL or null")
        region = raw.get("region", "us-east-1")
        if not isinstance(region, str) or not region:
            raise ConfigError(f"{ENV_STORAGE}: region must be a string")
        return cls(bucket, prefix, dict(credentials), endpoint or None, region,
                   quota_of(raw, ENV_STORAGE))

    @property
    def where(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"


def _string(raw: dict[str, Any], name: str) -> str:
    value = raw.get(name)
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{ENV_STORAGE}: {name} must be a non-empty string")
    return value


def quota_of(raw: dict[str, Any], where: str) -> int | None:
    value = raw.get("quota_bytes")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{where}: quota_bytes must be a whole number of bytes or null")
    return value
