"""What users do with instances: launch, list, stop, save, discard, delete, share.

(Saved images themselves, once saved: :mod:`control_plane.images`.)

Access (:mod:`control_plane.access`): the owner, a user the instance is shared with, or an admin.
Anyone else gets 404, exactly as for an id that does not exist. Grantees may see and stop a
shared instance; saving, discarding, deleting and sharing belong to the owner (and admins).

A launch that finds no room and a save leave the instance to the reaper (placed later, or
timed out), which may be switched off while no node runs: they wake it
(:mod:`control_plane.standby`). Everything else happens with a live node, so with it on.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
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
from control_plane.registry import JOB_TOKEN_LIFETIME, SAVED_TAG, RegistryTokens, user_repository
from control_plane.scheduler import Scheduler
from control_plane.shares import Shares
from control_plane.standby import Standby
from control_plane.table import ConditionFailed
from protocol.ids import new_id
from protocol.messages import DiscardInstance, Message, RegistryAccess, SaveInstance, StopInstance
from protocol.registry import PULL, PUSH, repository_access
from protocol.states import InstanceState

S = InstanceState
LOGOUT_FANOUT = 8
"""Back-channel calls made at once at logout (each waits up to its own timeout)."""


class Lifecycle:
    def __init__(self, *, config: Config, instances: Instances, catalog: Catalog, shares: Shares,
                 nodes: Nodes, scheduler: Scheduler, messenger: Messenger,
                 registrar: ClientRegistrar, access: Access, standby: Standby,
                 accounts_exist: Callable[[str], bool], registry: RegistryTokens) -> None:
        self.config = config
        self.registry = registry
        self.access = access
        self.instances = instances
        self.catalog = catalog
        self.shares = shares
        self.nodes = nodes
        self.scheduler = scheduler
        self.messenger = messenger
        self.registrar = registrar
        self.standby = standby
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

    def end_instance_sessions(self, user: User) -> int:
        """At portal logout: every running instance the user may open ends their sessions
        there too (the auth helpers' back channel, in parallel; best effort, the access
        tokens' five minutes bound what is missed). Returns how many confirmed."""
        running = [i for i in self.list_for(user) if i.state == S.RUNNING]
        if not running:
            return 0
        with ThreadPoolExecutor(max_workers=min(len(running), LOGOUT_FANOUT)) as pool:
            done = pool.map(lambda i: self.registrar.notify_revoked(
                i.instance_id, i.url, user.username), running)
            return sum(done)

    # --- launch -----------------------------------------------------------------------

    def launch(self, user: User, body: Launch) -> Instance:
        image = self.catalog.get_for(body.image_id, user.username, admin=user.admin)
        self.nodes.usable_cluster(body.cluster_id, user.username, admin=user.admin)
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
        placed = self.scheduler.place(item)
        if placed.state == S.PENDING:
            self.standby.wake()
        return placed

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
        """Tell the node to push the instance to the owner's namespace on the image server,
        with a token for exactly that (and a pull of the image it started from, whose layers
        it then mounts instead of uploading)."""
        item = self.owned(user, instance_id)
        if item.state != S.STOPPED:
            raise Conflict(f"instance is {item.state.value}; stop it before saving")
        if not item.node_queue_url:
            raise Conflict("instance never ran: there is nothing to save")
        self.registry.require()
        repository = user_repository(item.owner, item.instance_id)
        target = self.registry.reference(repository, tag=SAVED_TAG)
        access = [repository_access(repository, PUSH)]
        source = self.registry.repository_of(item.image)
        if source is not None and source != repository and \
                self.registry.may_pull(item.owner, source):  # a share revoked since: no mount
            access.append(repository_access(source, PULL))
        token = self.registry.token(f"node:{item.placed_on}", access,
                                    lifetime=JOB_TOKEN_LIFETIME)
        item = self._move(item, replace(item, state=S.SAVING, progress={"save": 0},
                                        reason=None, saved_image=target))
        self._tell_node(item, SaveInstance(
            instance_id=instance_id, image=target,
            registry=RegistryAccess(registry=self.config.registry, token=token),
            upload_url=self.config.pod_registry_url))
        self.standby.wake()  # its node may be gone: the reaper times the save out
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

    def sharing(self, user: User, instance_id: str) -> list[str]:
        """Who the instance is shared with (the owner's and admins' question)."""
        item = self.owned(user, instance_id)
        return self.shares.grantees("instance", item.instance_id)

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
        self.scheduler.retire(item.instance_id, item.hostname, reason)
