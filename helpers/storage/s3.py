"""The :class:`~helpers.storage.sync.Store` of an S3 bucket prefix, through boto3."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import boto3


class S3Store:
    """Objects under ``prefix`` of ``bucket``; keys are relative to the prefix."""

    def __init__(self, *, bucket: str, prefix: str, credentials: dict[str, str],
                 endpoint_url: str | None) -> None:
        self.bucket = bucket
        self.prefix = prefix
        self._client: Any = boto3.client(
            "s3", endpoint_url=endpoint_url or None,
            region_name=credentials.get("region", "us-east-1"),
            aws_access_key_id=credentials.get("access_key_id"),
            aws_secret_access_key=credentials.get("secret_access_key"),
            aws_session_token=credentials.get("session_token") or None)

    def list_keys(self) -> list[str]:
        found: list[str] = []
        pages = self._client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self.prefix)
        for page in pages:
            for item in page.get("Contents", []):
                key = str(item["Key"])[len(self.prefix):]
                if key and not key.endswith("/"):
                    found.append(key)
        return found

    def download(self, key: str, path: Path) -> None:
        self._client.download_file(self.bucket, self.prefix + key, str(path))

    def upload(self, path: Path, key: str) -> None:
        self._client.upload_file(str(path), self.bucket, self.prefix + key)

    def delete(self, key: str) -> None:
        self._client.delete_object(Bucket=self.bucket, Key=self.prefix + key)
