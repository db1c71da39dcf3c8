"""OAuth2 client credentials for each instance's auth helper (OAuthClientsTable).

Interim implementation until the portal's OAuth2 server (``control_plane.oauth``) lands: the
scheduler calls :class:`ClientRegistrar` only, so switching to ``OAuthServer.register_client`` is
a change in :mod:`control_plane.services` alone.
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Protocol

from control_plane.clock import now_iso
from control_plane.table import Table


class ClientRegistrar(Protocol):
    """Makes (and forgets) the OAuth2 client of one instance.

    ``register`` returns ``(client_id, client_secret)``; the secret is shown only here. Calling
    it again for the same instance replaces the previous client (re-placement makes a new pod).
    """

    def register(self, *, instance_id: str, owner: str, redirect_uri: str) -> tuple[str, str]:
        ...

    def forget(self, instance_id: str) -> None:
        ...


class TableClientRegistrar:
    def __init__(self, table: Table) -> None:
        self.table = table

    def register(self, *, instance_id: str, owner: str, redirect_uri: str) -> tuple[str, str]:
        client_id = f"instance-{instance_id}"
        secret = secrets.token_urlsafe(32)
        self.table.put({"client_id": client_id, "instance_id": instance_id, "owner": owner,
                        "redirect_uris": [redirect_uri],
                        "secret_sha256": hashlib.sha256(secret.encode()).hexdigest(),
                        "created_at": now_iso()})
        return client_id, secret

    def forget(self, instance_id: str) -> None:
        self.table.delete({"client_id": f"instance-{instance_id}"})
