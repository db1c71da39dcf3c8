"""Wiring: every domain object built once from a :class:`Config` and AWS clients.

Lambda keeps a process warm between requests, so :func:`current` builds the services on first use
and reuses them; :func:`use` swaps them (tests, the local stack with another environment).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from control_plane import __version__
from control_plane.access import Access
from control_plane.accounts import Accounts
from control_plane.aws import Clients
from control_plane.catalog import Catalog
from control_plane.config import Config
from control_plane.events import Events
from control_plane.identities import Identities
from control_plane.images import SavedImages
from control_plane.instance_clients import ClientRegistrar
from control_plane.instances import Instances
from control_plane.keys import KeyStore
from control_plane.lifecycle import Lifecycle
from control_plane.login_providers import LoginProviders, parse_providers
from control_plane.messaging import Messenger
from control_plane.nodes import Nodes
from control_plane.oauth import OAuthServer
from control_plane.reaper import Reaper
from control_plane.reconcile import Reconciler
from control_plane.records import CATALOG_OWNER
from control_plane.registry import RegistryTokens, repositories
from control_plane.replies import Health
from control_plane.revocations import Revocations
from control_plane.scheduler import Scheduler
from control_plane.shares import Shares
from control_plane.standby import Standby
from control_plane.storage import UserStorage
from control_plane.table import Table


@dataclass
class Services:
    config: Config
    clients: Clients
    accounts: Accounts
    keys: KeyStore
    catalog: Catalog
    shares: Shares
    standby: Standby
    nodes: Nodes
    instances: Instances
    messenger: Messenger
    registrar: ClientRegistrar
    scheduler: Scheduler
    lifecycle: Lifecycle
    events: Events
    reaper: Reaper
    access: Access
    oauth: OAuthServer
    logins: LoginProviders
    registry: RegistryTokens
    images: SavedImages
    storage: UserStorage

    @classmethod
    def build(cls, config: Config, clients: Clients | None = None,
              registrar: ClientRegistrar | None = None) -> Services:
        clients = clients or Clients(config)
        ddb = clients.get("dynamodb")
        t = config.tables

        def table(name: str) -> Table:
            return Table(ddb, name)

        accounts = Accounts(table(t.users), table(t.sessions), table(t.tokens),
                            session_seconds=config.session_seconds,
                            failures_per_account=config.login_failures_per_account,
                            failures_per_address=config.login_failures_per_address)
        keys = KeyStore(clients.get("ssm"), config.signing_key_parameter)
        shares = Shares(table(t.shares))
        catalog = Catalog(table(t.images), shares)
        standby = Standby(clients, rule=config.reaper_rule, mapping=config.events_mapping)
        nodes = Nodes(config=config, clusters=table(t.clusters), nodes=table(t.nodes),
                      tokens=table(t.tokens), sqs=clients.get("sqs"), sts=clients.get("sts"),
                      standby=standby)
        registry = RegistryTokens(
            config=config, keys=keys, accounts=accounts, nodes=nodes,
            catalog_repositories=lambda: repositories(config.registry,
                                                      catalog.owned_by(CATALOG_OWNER)),
            shared_repositories=lambda user: repositories(config.registry,
                                                          catalog.shared_with(user)))
        instances = Instances(table(t.instances), table(t.nodes), table(t.users),
                              transition_timeout=config.transition_timeout_seconds)
        messenger = Messenger(clients.get("sqs"), clients.get("sns"),
                              config.revocations_topic_arn, Revocations(table(t.revocations)))
        access = Access(instances, shares)
        oauth = OAuthServer(clients=table(t.oauth_clients), tokens=table(t.tokens), signer=keys,
                            issuer=config.portal_url, can_access=access.can_access)
        registrar = registrar or oauth
        storage = UserStorage(config=config, sts=clients.get("sts"), users=table(t.users),
                              instances=instances, nodes=nodes)
        scheduler = Scheduler(config=config, instances=instances, nodes=nodes, keys=keys,
                              messenger=messenger, registrar=registrar, registry=registry,
                              storage=storage)
        lifecycle = Lifecycle(config=config, instances=instances, catalog=catalog,
                              shares=shares, nodes=nodes, scheduler=scheduler,
                              messenger=messenger, registrar=registrar, access=access,
                              standby=standby, accounts_exist=accounts.exists,
                              registry=registry)
        reconciler = Reconciler(instances, nodes, messenger, scheduler,
                                grace_seconds=config.reconcile_grace_seconds,
                                hostname=config.instance_hostname)
        events = Events(instances, nodes, catalog, messenger, scheduler=scheduler,
                        reconciler=reconciler, registry=registry)
        reaper = Reaper(instances, nodes, scheduler, reconciler, standby,
                        node_silent_seconds=config.node_silent_seconds,
                        transition_timeout=config.transition_timeout_seconds)
        logins = LoginProviders(parse_providers(config.login_providers), table(t.tokens),
                                accounts, Identities(table(t.users)), config.portal_url)
        images = SavedImages(config=config, catalog=catalog, shares=shares, registry=registry,
                             accounts_exist=accounts.exists)
        return cls(config, clients, accounts, keys, catalog, shares, standby, nodes, instances,
                   messenger, registrar, scheduler, lifecycle, events, reaper, access, oauth,
                   logins, registry, images, storage)

    def can_access(self, username: str, instance_id: str) -> bool:
        """Owner, share grantee, or admin: may this user reach this instance?"""
        return self.access.can_access(username, instance_id)

    def health(self) -> Health:
        """Version and the state of each dependency (one cheap call each)."""
        checks = {
            "dynamodb": lambda: self.clients.get("dynamodb").describe_table(
                TableName=self.config.tables.users),
            "sqs": lambda: self.clients.get("sqs").get_queue_attributes(
                QueueUrl=self.config.events_queue_url, AttributeNames=["QueueArn"]),
            "ssm": self.keys.check,
        }
        if self.config.registry_url:
            checks["image_server"] = self.registry.check
        results: dict[str, str] = {}
        for name, check in checks.items():
            try:
                check()
                results[name] = "ok"
            except Exception as exc:
                results[name] = f"error: {type(exc).__name__}"
        ok = all(v == "ok" for v in results.values())
        return Health(status="ok" if ok else "degraded", version=__version__,
                      registry=self.config.registry or None,
                      helpers_image=self.config.helpers_image or None, dependencies=results)


_current: Services | None = None
_lock = threading.Lock()


def current() -> Services:
    global _current  # noqa: PLW0603 - the one per-process instance Lambda keeps warm
    if _current is None:
        with _lock:
            if _current is None:
                _current = Services.build(Config.from_env())
    return _current


def use(services: Services | None) -> None:
    """Replace (or, with None, forget) the process's services."""
    global _current  # noqa: PLW0603
    _current = services
