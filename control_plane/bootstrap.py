"""The defaults a deployment needs before anyone can use it (docs/contracts.md, "bootstrap").

Both start-ups share :func:`ensure_defaults` (the default cluster, the catalog entries upserted
by image reference, the signing key):

- :func:`ensure_local_defaults` (``make run``, every start): the admin account exists with the
  given password (reset every call), the defaults, and a fresh join token for the default cluster.
- :func:`bootstrap` (``python -m control_plane bootstrap``, once per deployment): refuses when
  the admin account exists already (a second bootstrap changes nothing); otherwise the defaults,
  then the admin account last (a conditional put), then a join token. A failure before the
  admin exists leaves only idempotent upserts behind, so running it again finishes the job.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from control_plane import services
from control_plane.accounts import check_new_password
from control_plane.bodies import DEFAULT_CLUSTER, NewImage, NewUser
from control_plane.errors import Conflict

ADMIN_USERNAME = "admin"

DEMO_CATALOG: Final = (
    # Public images that serve HTTP without a login of their own (the auth helper is the
    # login); nodes pull them from Docker Hub.
    NewImage(name="Hello (nginx demo page)", image="nginxdemos/hello:plain-text", port=80,
                 cpu=0.25, memory_mb=64, tags=["demo"]),
    NewImage(name="whoami (request echo)", image="traefik/whoami:v1.10", port=80,
                 cpu=0.25, memory_mb=64, tags=["demo"]),
)
"""The demo catalog a fresh cloud deployment starts with (the local stack has its own:
images this machine builds, :mod:`infra.local.catalog`)."""


class AlreadyBootstrapped(Conflict):
    """The admin account exists: this deployment was bootstrapped before."""


@dataclass(frozen=True)
class LocalDefaults:
    cluster_id: str
    join_token: str


@dataclass(frozen=True)
class Bootstrapped:
    portal_url: str
    cluster_id: str
    join_token: str


def ensure_defaults(svc: services.Services, catalog: Sequence[NewImage]) -> None:
    """The default cluster, the catalog entries and the signing key; idempotent."""
    svc.nodes.create_cluster("Default cluster", cluster_id=DEFAULT_CLUSTER)
    for entry in catalog:
        svc.catalog.add(entry)
    svc.keys.current()  # the signing key exists before the first verifier asks for the JWKS


def ensure_local_defaults(admin_password: str, catalog: Sequence[NewImage],
                          svc: services.Services | None = None) -> LocalDefaults:
    svc = svc or services.current()
    svc.accounts.set_password(ADMIN_USERNAME, admin_password, admin=True)
    ensure_defaults(svc, catalog)
    token = svc.nodes.create_join_token(DEFAULT_CLUSTER).token
    return LocalDefaults(cluster_id=DEFAULT_CLUSTER, join_token=token)


def bootstrap(svc: services.Services, admin_password: str,
              catalog: Sequence[NewImage] = DEMO_CATALOG) -> Bootstrapped:
    """A fresh deployment made usable; see the module docstring."""
    check_new_password(admin_password)
    if svc.accounts.exists(ADMIN_USERNAME):
        raise AlreadyBootstrapped(f"already bootstrapped: user {ADMIN_USERNAME!r} exists "
                                  "(nothing changed; log in and make join tokens in the portal)")
    ensure_defaults(svc, catalog)
    try:
        svc.accounts.create_user(NewUser(username=ADMIN_USERNAME, password=admin_password,
                                         admin=True))
    except Conflict:
        raise AlreadyBootstrapped(f"already bootstrapped: user {ADMIN_USERNAME!r} was made "
                                  "meanwhile (nothing changed)") from None
    token = svc.nodes.create_join_token(DEFAULT_CLUSTER).token
    return Bootstrapped(portal_url=svc.config.portal_url, cluster_id=DEFAULT_CLUSTER,
                        join_token=token)


__all__ = ["DEMO_CATALOG", "AlreadyBootstrapped", "Bootstrapped", "LocalDefaults", "bootstrap",
           "ensure_defaults", "ensure_local_defaults"]
