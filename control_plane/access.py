"""Who may reach an instance: its owner or a user it is shared with.

:meth:`Access.can_access` is the question the OAuth2 server asks at every grant (so revoking a
share ends access at the next token renewal). Admins are not in it: they manage every instance
through the API, but a user's tool (their notebooks, their terminal) opens only for the people
its owner chose, as with JupyterHub's ``admin_access`` off. :meth:`Access.visible` is the API's
version, which answers 404 for an instance the user may not see, exactly as for one that does
not exist.
"""

from __future__ import annotations

from control_plane.accounts import User
from control_plane.errors import NotFound
from control_plane.instances import Instances
from control_plane.records import Instance
from control_plane.shares import Shares
from protocol.ids import is_id


class Access:
    def __init__(self, instances: Instances, shares: Shares) -> None:
        self.instances = instances
        self.shares = shares

    def can_access(self, username: str, instance_id: str) -> bool:
        """True for the owner or a share grantee; False for anyone else and unknown ids."""
        item = self.instances.get(instance_id) if is_id(instance_id) else None
        if item is None:
            return False
        return item.owner == username or self.shares.has("instance", instance_id, username)

    def visible(self, user: User, instance_id: str) -> Instance:
        item = self.instances.get(instance_id) if is_id(instance_id) else None
        if item is not None and (user.admin or item.owner == user.username
                                 or self.shares.has("instance", instance_id, user.username)):
            return item
        raise NotFound(f"no instance {instance_id!r}")
