"""Who may reach an instance: its owner, a user it is shared with, or an admin.

:meth:`Access.can_access` is the question the OAuth2 server asks at every grant (so revoking a
share ends access at the next token renewal); :meth:`Access.visible` is the API's version, which
answers 404 for an instance the user may not see, exactly as for one that does not exist.
"""

from __future__ import annotations

from collections.abc import Callable

from control_plane import validate
from control_plane.accounts import User
from control_plane.errors import NotFound
from control_plane.instances import Instances
from control_plane.shares import Shares
from control_plane.table import Item


class Access:
    def __init__(self, instances: Instances, shares: Shares,
                 is_admin: Callable[[str], bool]) -> None:
        self.instances = instances
        self.shares = shares
        self.is_admin = is_admin

    def can_access(self, username: str, instance_id: str) -> bool:
        """True for the owner, a share grantee or an admin; False for unknown ids or users."""
        if not validate.ID.match(instance_id):
            return False
        item = self.instances.get(instance_id)
        if item is None:
            return False
        return (item["owner"] == username or self.shares.has("instance", instance_id, username)
                or self.is_admin(username))

    def visible(self, user: User, instance_id: str) -> Item:
        item = self.instances.get(validate.ident(instance_id, "instance"))
        if item is not None and (user.admin or item["owner"] == user.username
                                 or self.shares.has("instance", instance_id, user.username)):
            return item
        raise NotFound(f"no instance {instance_id!r}")
