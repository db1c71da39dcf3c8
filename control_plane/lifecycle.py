"""What users do with instances: launch, list, stop, save, discard, delete, share.

Access (:mod:`control_plane.access`): the owner, a user the instance is shared with, or an admin.
Anyone else gets 404, exactly as for an id that does not exist. Grantees may see and stop a
shared instance; saving, discarding, deleting and sharing belong to the owner (and admins).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import replace

from control_plane.access import Access
from control_plane.accounts import User
from control_plane.bodies import Launch, Share
from control_plane.catalog import Catalog
from control_plane.config import Config
from control_plane.errors import BadRequest, Conflict, Forbidden, NotFound, TooManyRequests
from control_plane.instance_clients import ClientRegistrar
from control_plane.instances import Instances
from control_plane.messaging import Messenger
from control_plane.nodes import Nodes
from control_plane.records import UNPLACED, Instance
from control_plane.scheduler import Scheduler
from control_plane.shares import Shares
from control_plane.table import ConditionFailed
from protocol.ids import new_id
from protocol.messages import DiscardInstance, Message, SaveInstance, StopInstance
from protocol.states import InstanceState

S = InstanceState


class Lifecycle:
    def __init__(self, *, config: Config, instances: Instances, catalog: Catalog, shares: Shares,
                 nodes: Nodes, scheduler: Scheduler, messenger: Messenger,
                 registrar: ClientRegistrar, access: Access,
                 accounts_exist: Callable[[str], bool]) -> None:
        self.config = config
        self.access = access
        self.instances = instances
        self.catalog = catalog
        self.shares = shares
        self.nodes = nodes
        self.scheduler = scheduler
        self.messenger = messenger
        self.registrar = registrar
        self.accounts_exist = accounts_exist

    # --- access -----------------------------------------------------------------------

    def visible(self, user: User, instance_id: str) -> Instance:
        return self.access.visible(user, instance_id)

    def owned(self, user: User, instance_id: str) -> Instance:
        item = self.visible(user, instance_id)
        if not user.admin and item.owner != user.username:
            raise Forbidden("only the owner can do this")
        return item

    def list_all(self, user: User) -> list[Instance]:
        """Every instance (admins): one Query per node, plus the unplaced ones."""
        if not user.admin:
            raise Forbidden("only admins list every instance")
        node_ids = [UNPLACED] + [n.node_id for c in self.nodes.all_clusters()
                                 for n in self.nodes.in_cluster(c.cluster_id)]
        items = [i for node_id in node_ids for i in self.instances.on_node(node_id)]
        return sorted(items, key=lambda i: i.created_at, reverse=True)

    def list_for(self, user: User) -> list[Instance]:
        items = self.instances.of_owner(user.username)
        shared = self.shares.shared_with("instance", user.username)
        if shared:
            items += self.instances.many(shared)
        return items

    # --- launch -----------------------------------------------------------------------

    def launch(self, user: User, body: Launch) -> Instance:
        image = self.catalog.get_for(body.image_id, user.username, admin=user.admin)
        self.nodes.get_cluster(body.cluster_id)
        limit = self.config.max_running_per_user
        instance_id = new_id()
        try:
            item = self.instances.create(Instance(
                instance_id=instance_id, owner=user.username, name=body.name or image.name,
                image_id=image.image_id, image=image.image, port=image.port, cpu=image.cpu,
                memory_mb=image.memory_mb, cluster_id=body.cluster_id,
                hostname=self.config.instance_hostname(instance_id),
                url=self.config.instance_url(instance_id)), limit=limit)
        except ConditionFailed:
            raise TooManyRequests(
                f"you already have {limit} instances running or starting (the limit is "
                f"{limit}); stop one before launching another") from None
        return self.scheduler.place(item)

    # --- lifecycle --------------------------------------------------------------------

    def stop(self, user: User, instance_id: str) -> Instance:
        item = self.visible(user, instance_id)
        if item.state in (S.STOPPING, S.STOPPED):
            return item
        if not item.state.can_become(S.STOPPING):
            raise Conflict(f"instance is {item.state.value}; only a live instance can be stopped")
        if item.state == S.PENDING:  # never placed: nothing to tell a node
            item = self._move(item, S.STOPPING)
            return self._move(item, replace(item, state=S.STOPPED,
                                            reason="stopped before it was placed"))
        item = self._move(item, S.STOPPING)
        self._tell_node(item, StopInstance(instance_id=instance_id))
        return item

    def save(self, user: User, instance_id: str) -> Instance:
        item = self.owned(user, instance_id)
        if item.state != S.STOPPED:
            raise Conflict(f"instance is {item.state.value}; stop it before saving")
        if not item.node_queue_url:
            raise Conflict("instance never ran: there is nothing to save")
        owner = re.sub(r"[^a-z0-9._-]", "-", item.owner)
        target = f"dit4c-saved/{owner}/{item.instance_id}:latest"
        item = self._move(item, replace(item, state=S.SAVING, progress={"save": 0},
                                        saved_image=target))
        self._tell_node(item, SaveInstance(instance_id=instance_id, image=target))
        return item

    def discard(self, user: User, instance_id: str) -> Instance:
        item = self.owned(user, instance_id)
        if item.state == S.DISCARDED:
            return item
        if not item.state.can_become(S.DISCARDED):
            raise Conflict(f"instance is {item.state.value}; stop it before discarding")
        item = self._move(item, S.DISCARDED)
        self._forget(item, "discarded")
        return item

    def delete(self, user: User, instance_id: str) -> None:
        item = self.owned(user, instance_id)
        if item.state in (S.STOPPED, S.FAILED):
            item = self._move(item, S.DISCARDED)
            self._forget(item, "deleted")
        elif item.state == S.PENDING:
            item = self._move(item, S.STOPPING)
            item = self._move(item, S.STOPPED)
        elif item.state not in (S.SAVED, S.DISCARDED):
            raise Conflict(f"instance is {item.state.value}; stop it before deleting")
        try:
            self.instances.delete(item)
        except ConditionFailed:
            raise Conflict("instance changed meanwhile; try again") from None
        self.shares.remove_all("instance", item.instance_id)
        self.messenger.revoke(item.instance_id, item.hostname, "deleted")

    def share(self, user: User, instance_id: str, body: Share) -> list[str]:
        """Grant or revoke; returns who the instance is shared with now."""
        item = self.owned(user, instance_id)
        grantee, revoke = self._grantee(body, item.owner)
        if revoke:
            # Only the grantee loses access: end their sessions in the pod (the next token
            # renewal re-checks access anyway). A router revocation here would close the
            # pod's tunnel and cut off the owner too.
            if self.shares.revoke("instance", instance_id, grantee):
                self.registrar.notify_revoked(instance_id, item.url, grantee)
        else:
            self.shares.grant("instance", instance_id, grantee, user.username)
        return self.shares.grantees("instance", instance_id)

    def share_image(self, user: User, image_id: str, body: Share) -> list[str]:
        """Grant or revoke; returns who the image is shared with now."""
        image = self.catalog.get_for(image_id, user.username, admin=user.admin)
        if image.owner != user.username and not user.admin:
            raise Forbidden("only the owner can share this image")
        grantee, revoke = self._grantee(body, image.owner)
        if revoke:
            self.shares.revoke("image", image_id, grantee)
        else:
            self.shares.grant("image", image_id, grantee, user.username)
        return self.shares.grantees("image", image_id)

    def _grantee(self, body: Share, owner: str) -> tuple[str, bool]:
        if body.username == owner:
            raise BadRequest("the owner always has access")
        if not body.revoke and not self.accounts_exist(body.username):
            raise NotFound(f"no user {body.username!r}")
        return body.username, body.revoke

    # --- helpers ----------------------------------------------------------------------

    def _move(self, item: Instance, new: Instance | InstanceState) -> Instance:
        try:
            return self.instances.transition(item, new)
        except ConditionFailed:
            raise Conflict("instance changed meanwhile; reload and try again") from None

    def _tell_node(self, item: Instance, message: Message) -> None:
        """Send to the node the instance is placed on (an unplaced one has none to tell)."""
        if item.node_queue_url:
            self.messenger.send(item.node_queue_url, message)

    def _forget(self, item: Instance, reason: str) -> None:
        self._tell_node(item, DiscardInstance(instance_id=item.instance_id))
        self.registrar.forget(item.instance_id)
        self.messenger.revoke(item.instance_id, item.hostname, reason)
