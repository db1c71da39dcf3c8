"""Users' persistent storage: one prefix per user in the deployment's bucket, reached by pods
with short-lived credentials that allow nothing else.

- **Prefix**: ``users/<username>/`` (usernames have no ``/``, ``*``, ``?`` or ``$``: nothing in
  one can widen the policy below; :func:`prefix_of` checks it again).
- **Credentials**: ``sts:AssumeRole`` of ``DIT4C_STORAGE_ROLE_ARN`` with a session policy naming
  only that prefix (:func:`session_policy`: ``s3:ListBucket`` on the bucket with an ``s3:prefix``
  condition, object actions on ``bucket/prefix*``), for ``DIT4C_STORAGE_CREDENTIALS_SECONDS``
  (at most an hour). The start command carries them; the node renews them through
  ``POST /api/nodes/{node}/instances/{instance}/storage`` for an instance placed on it and
  live, and no other.
- **Quota**: ``DIT4C_STORAGE_QUOTA_MB`` (the template's ``StorageQuotaMb``), or the user's own
  (``storage_quota_mb`` on the user's item, set by an admin). The storage helper enforces it.
- **Usage**: counted by listing the prefix with the user's own scoped credentials (the API
  function needs no S3 permission of its own), kept on the user's item for a minute.

The API function assumes the role for both; the role's own policy allows the S3 actions on
``users/*`` of the bucket (template.yaml, ``StorageRole``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import time
from dataclasses import replace
from typing import Any

from control_plane.config import Config
from control_plane.errors import BadRequest, Conflict, ControlPlaneError, Forbidden, NotFound
from control_plane.instances import Instances
from control_plane.nodes import Nodes
from control_plane.records import Instance
from control_plane.table import ConditionFailed, Table
from protocol.messages import StorageAccess
from protocol.states import InstanceState

log = logging.getLogger("dit4c.control_plane.storage")

SAFE_USERNAME = re.compile(r"^[a-z0-9][a-z0-9_.@-]{0,63}$")
OBJECT_ACTIONS = ("s3:GetObject", "s3:PutObject", "s3:DeleteObject",
                  "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts")
COUNT_SECONDS = 15
"""A stored usage count younger than this is shown as is."""
RENEWABLE = frozenset({InstanceState.SCHEDULED, InstanceState.STARTING, InstanceState.RUNNING})
"""An instance in these states may have its storage credentials renewed by its node."""
MB = 1024 * 1024


class StorageUnavailable(ControlPlaneError):
    """Storage credentials could not be made (a launch fails with this reason)."""

    status = 503
    code = "storage_unavailable"


def prefix_of(username: str) -> str:
    if not SAFE_USERNAME.match(username):
        raise BadRequest(f"no storage for the user name {username!r}")
    return f"users/{username}/"


def session_policy(bucket: str, prefix: str) -> dict[str, Any]:
    """What credentials for ``prefix`` may do: list under it, and read, write and delete the
    objects under it; nothing else (a session policy only narrows the role's)."""
    return {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "s3:ListBucket", "Resource": f"arn:aws:s3:::{bucket}",
         "Condition": {"StringLike": {"s3:prefix": [prefix, f"{prefix}*"]}}},
        {"Effect": "Allow", "Action": list(OBJECT_ACTIONS),
         "Resource": f"arn:aws:s3:::{bucket}/{prefix}*"},
    ]}


class UserStorage:
    """Storage credentials, quotas and usage (see the module docstring)."""

    def __init__(self, *, config: Config, sts: Any, users: Table, instances: Instances,
                 nodes: Nodes, s3_client: Any = None) -> None:
        self.config = config
        self.sts = sts
        self.users = users
        self.instances = instances
        self.nodes = nodes
        self._s3_client = s3_client
        """Makes an S3 client from credentials (tests may pass their own factory)."""

    @property
    def enabled(self) -> bool:
        return bool(self.config.storage_bucket and self.config.storage_role_arn)

    # --- credentials ------------------------------------------------------------------

    def access_for(self, username: str) -> StorageAccess:
        """Fresh credentials for ``username``'s prefix, with their quota."""
        prefix = prefix_of(username)
        bucket = self.config.storage_bucket
        try:
            creds = self.sts.assume_role(
                RoleArn=self.config.storage_role_arn,
                RoleSessionName=f"s-{username}"[:64],
                Policy=json.dumps(session_policy(bucket, prefix)),
                DurationSeconds=self.config.storage_credentials_seconds)["Credentials"]
        except Exception as exc:  # botocore's errors: the caller says what failed
            log.error("storage credentials for %s failed: %r", username, exc)
            raise StorageUnavailable(f"storage credentials could not be made: "
                                     f"{type(exc).__name__}") from None
        expiration = creds["Expiration"]
        return StorageAccess(
            kind="s3", bucket=bucket, prefix=prefix,
            credentials={"access_key_id": creds["AccessKeyId"],
                         "secret_access_key": creds["SecretAccessKey"],
                         "session_token": creds["SessionToken"],
                         "expiration": expiration.isoformat()
                         if hasattr(expiration, "isoformat") else str(expiration)},
            endpoint_url=self.config.storage_endpoint_url, region=self.config.region,
            quota_bytes=self.quota_bytes(username))

    def renew(self, node_id: str, instance_id: str, authorization: str | None, *,
              ok: bool, message: str | None, usage_bytes: int | None) -> StorageAccess:
        """A node renews the storage of an instance it runs, and says how the helper is."""
        self.nodes.authenticate(node_id, authorization)
        instance = self.instances.get(instance_id)
        if instance is None or instance.node_id != node_id:
            raise Forbidden(f"instance {instance_id} is not placed on node {node_id}")
        if instance.state not in RENEWABLE:
            raise Conflict(f"instance {instance_id} is {instance.state.value}: its storage "
                           "is not renewed")
        if not self.enabled:
            raise NotFound("this deployment has no storage")
        self._note(instance, ok=ok, message=message, usage_bytes=usage_bytes)
        return self.access_for(instance.owner)

    def _note(self, instance: Instance, *, ok: bool, message: str | None,
              usage_bytes: int | None) -> None:
        """Keep the helper's report on the instance (shown to the user), and the usage."""
        for _ in range(3):
            try:
                self.instances.update(instance, replace(
                    instance, storage_ok=ok, storage_message=message,
                    storage_reported_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())))
                break
            except ConditionFailed:  # the state moved meanwhile: note it on the new version
                fresh = self.instances.get(instance.instance_id)
                if fresh is None:
                    return
                instance = fresh
        if usage_bytes is not None:
            self._store_usage(instance.owner, usage_bytes)

    # --- quotas and usage -------------------------------------------------------------

    def quota_bytes(self, username: str) -> int:
        item = self.users.get({"username": username}, consistent=False) or {}
        quota_mb = item.get("storage_quota_mb")
        return int(quota_mb if quota_mb is not None else self.config.storage_quota_mb) * MB

    def set_quota(self, username: str, quota_mb: int | None) -> None:
        """An admin's per-user override (None: back to the default)."""
        try:
            if quota_mb is None:
                self.users.update({"username": username}, "REMOVE storage_quota_mb",
                                  condition="attribute_exists(username)")
            else:
                self.users.update({"username": username}, "SET storage_quota_mb = :q",
                                  condition="attribute_exists(username)",
                                  vals={":q": quota_mb})
        except ConditionFailed:
            raise NotFound(f"no user {username!r}") from None

    def usage(self, username: str, *, fresh: bool = False) -> tuple[int, str]:
        """(bytes stored, when counted): counted again when older than COUNT_SECONDS."""
        item = self.users.get({"username": username}, consistent=False)
        if item is None:
            raise NotFound(f"no user {username!r}")
        counted = item.get("storage_counted_at")
        if not fresh and counted is not None and time.time() - float(counted) < COUNT_SECONDS:
            return int(item.get("storage_used_bytes", 0)), _iso(float(counted))
        total = self.count(username)
        return total, _iso(self._store_usage(username, total))

    def count(self, username: str) -> int:
        """Bytes under the user's prefix, listed with the user's own credentials."""
        access = self.access_for(username)
        client = self._client(access)
        total, token = 0, None
        while True:
            kwargs: dict[str, Any] = {"Bucket": access.bucket, "Prefix": access.prefix}
            if token:
                kwargs["ContinuationToken"] = token
            try:
                page = client.list_objects_v2(**kwargs)
            except Exception as exc:
                raise StorageUnavailable(f"storage could not be counted: "
                                         f"{type(exc).__name__}") from None
            total += sum(int(o["Size"]) for o in page.get("Contents", []))
            if not page.get("IsTruncated"):
                return total
            token = page["NextContinuationToken"]

    def _store_usage(self, username: str, total: int) -> float:
        now = time.time()
        with contextlib.suppress(ConditionFailed):  # the user is gone: nothing to keep
            self.users.update({"username": username},
                              "SET storage_used_bytes = :u, storage_counted_at = :t",
                              condition="attribute_exists(username)",
                              vals={":u": total, ":t": now})
        return now

    def _client(self, access: StorageAccess) -> Any:
        if self._s3_client is not None:
            return self._s3_client(access)
        import boto3  # noqa: PLC0415 - as control_plane.aws: only requests that count pay it

        creds = access.credentials
        # The control plane's own way to S3 (the access's endpoint is the pods').
        return boto3.client("s3", endpoint_url=self.config.aws_endpoint_url,
                            region_name=access.region,
                            aws_access_key_id=creds["access_key_id"],
                            aws_secret_access_key=creds["secret_access_key"],
                            aws_session_token=creds["session_token"])


def _iso(when: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))
