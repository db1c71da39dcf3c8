"""Local defaults for the embedded stack (docs/contracts.md, "local bootstrap").

:func:`ensure_local_defaults` is idempotent: the admin account exists with the given password
(reset every call), the default cluster exists, the catalog entries are upserted by image
reference, and a fresh join token is issued for the default cluster on every call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from control_plane import services
from control_plane.bodies import DEFAULT_CLUSTER, NewImage

ADMIN_USERNAME = "admin"


@dataclass(frozen=True)
class LocalDefaults:
    cluster_id: str
    join_token: str


def ensure_local_defaults(admin_password: str, catalog: Sequence[NewImage],
                          svc: services.Services | None = None) -> LocalDefaults:
    svc = svc or services.current()
    svc.accounts.set_password(ADMIN_USERNAME, admin_password, admin=True)
    svc.nodes.create_cluster("Default cluster", cluster_id=DEFAULT_CLUSTER)
    for entry in catalog:
        svc.catalog.add(entry)
    svc.keys.current()  # the signing key exists before the first verifier asks for the JWKS
    token = svc.nodes.create_join_token(DEFAULT_CLUSTER).token
    return LocalDefaults(cluster_id=DEFAULT_CLUSTER, join_token=token)


__all__ = ["LocalDefaults", "ensure_local_defaults"]
