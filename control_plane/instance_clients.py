"""The seam through which launches make each instance's OAuth2 client.

The scheduler calls :class:`ClientRegistrar` only; :class:`control_plane.oauth.OAuthServer`
implements it (wired in :mod:`control_plane.services`).
"""

from __future__ import annotations

from typing import Protocol


class ClientRegistrar(Protocol):
    """Makes (and forgets) the OAuth2 client of one instance.

    ``register`` returns ``(client_id, client_secret)``; the secret is shown only here. Calling
    it again for the same instance replaces the previous client (re-placement makes a new pod).
    """

    def register(self, *, instance_id: str, owner: str, redirect_uri: str) -> tuple[str, str]:
        ...

    def forget(self, instance_id: str) -> None:
        ...
