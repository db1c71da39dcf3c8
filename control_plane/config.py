"""The control plane's one configuration object, read once from the environment.

Names are ``template.yaml``'s ``Globals`` (set by SAM on Lambda) plus, for non-AWS deployments
such as the local stack (see docs/contracts.md):

- ``DIT4C_AWS_ENDPOINT_URL``: one endpoint for every AWS client (moto server locally).
- ``DIT4C_ROUTER_PUBLIC_PORT``: port in instance URLs (unset: the scheme's default).
- ``DIT4C_POD_PORTAL_URL``: the portal as pods reach it (default: ``DIT4C_PORTAL_URL``).
- ``DIT4C_POD_AWS_ENDPOINT_URL``: S3 as pods reach it (default: ``DIT4C_AWS_ENDPOINT_URL``).

``DIT4C_EVENTS_MAPPING`` (the events trigger's UUID) is the reaper's own setting on Lambda
(``template.yaml`` gives it to that function alone); without it, as locally, only the reaper's
schedule is switched (:mod:`control_plane.standby`).

The image server (docs/images.md), all optional (without ``DIT4C_REGISTRY`` nothing can be
saved, shared across nodes or exported):

- ``DIT4C_REGISTRY``: its ``host[:port]`` as image references name it (what nodes pull from).
- ``DIT4C_REGISTRY_URL``: its base URL as the control plane reaches it (health, deletes);
  default ``https://<DIT4C_REGISTRY>``.
- ``DIT4C_POD_REGISTRY_URL``: its base URL as pods (the upload helper) reach it; default
  ``DIT4C_REGISTRY_URL``.
- ``DIT4C_REGISTRY_SERVICE``: the registry's ``service`` (token audience), default
  ``dit4c-registry``.
- ``DIT4C_EXPORT_URL``: the image exporter's public base URL (export links).
- ``DIT4C_EXPORT_LINK_SECONDS``: how long an export link works (default 3600).
- ``DIT4C_HELPERS_IMAGE``: the helpers image published there, pinned by digest; nodes pull it
  with their own registry token and check it (docs/node-daemon.md, "Helpers image").

Tunables with defaults (``DIT4C_SESSION_HOURS``, ``DIT4C_NODE_SILENT_SECONDS``, ...) are listed in
:data:`DEFAULTS`. A missing or malformed setting raises :class:`ConfigError` naming it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from control_plane.errors import ConfigError
from protocol.errors import RegistryError
from protocol.ids import instance_host
from protocol.registry import DEFAULT_SERVICE, parse_reference
from protocol.tokens import TUNNEL_TOKEN_MAX_LIFETIME

REQUIRED = (
    "DIT4C_PORTAL_URL",
    "DIT4C_ROUTER_DOMAIN",
    "DIT4C_USERS_TABLE",
    "DIT4C_SESSIONS_TABLE",
    "DIT4C_IMAGES_TABLE",
    "DIT4C_INSTANCES_TABLE",
    "DIT4C_SHARES_TABLE",
    "DIT4C_CLUSTERS_TABLE",
    "DIT4C_NODES_TABLE",
    "DIT4C_TOKENS_TABLE",
    "DIT4C_OAUTH_CLIENTS_TABLE",
    "DIT4C_REVOCATIONS_TABLE",
    "DIT4C_EVENTS_QUEUE_URL",
    "DIT4C_EVENTS_QUEUE_ARN",
    "DIT4C_NODE_COMMANDS_DLQ_ARN",
    "DIT4C_NODE_QUEUE_PREFIX",
    "DIT4C_NODE_ROLE_ARN",
    "DIT4C_REVOCATIONS_TOPIC_ARN",
    "DIT4C_SIGNING_KEY_PARAMETER",
    "DIT4C_REAPER_RULE",
)

DEFAULTS: Mapping[str, str] = {
    "DIT4C_ROUTER_SCHEME": "https",
    "DIT4C_ROUTER_TUNNEL_URLS": "",
    "DIT4C_MAX_RUNNING_PER_USER": "4",
    "DIT4C_SESSION_HOURS": "12",
    # Nodes send a heartbeat every 240 s (node_daemon.config): silent = two missed, and a bit.
    "DIT4C_NODE_SILENT_SECONDS": "600",
    "DIT4C_TRANSITION_TIMEOUT_SECONDS": "600",
    "DIT4C_RECONCILE_GRACE_SECONDS": "60",
    "DIT4C_JOIN_TOKEN_HOURS": "24",
    "DIT4C_NODE_CREDENTIALS_SECONDS": "3600",
    # Nodes renew at half-life: an hour (the most routers take) keeps the calls rare.
    "DIT4C_TUNNEL_TOKEN_SECONDS": "3600",
    "DIT4C_LOGIN_FAILURES_PER_ACCOUNT": "5",
    "DIT4C_LOGIN_FAILURES_PER_ADDRESS": "20",
    "DIT4C_STORAGE_BUCKET": "",
    "DIT4C_REGISTRY_SERVICE": DEFAULT_SERVICE,
    "DIT4C_EXPORT_LINK_SECONDS": "3600",
    "DIT4C_STORAGE_ROLE_ARN": "",
    "DIT4C_STORAGE_QUOTA_MB": "10240",
    "DIT4C_STORAGE_CREDENTIALS_SECONDS": "3600",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@dataclass(frozen=True, kw_only=True)
class Tables:
    users: str
    sessions: str
    images: str
    instances: str
    shares: str
    clusters: str
    nodes: str
    tokens: str
    oauth_clients: str
    revocations: str


@dataclass(frozen=True, kw_only=True)
class Config:
    portal_url: str
    pod_portal_url: str
    router_domain: str
    router_scheme: str
    router_public_port: int | None
    router_tunnel_urls: tuple[str, ...]
    max_running_per_user: int
    tables: Tables
    events_queue_url: str
    events_queue_arn: str
    node_commands_dlq_arn: str
    node_queue_prefix: str
    node_role_arn: str
    revocations_topic_arn: str
    signing_key_parameter: str
    reaper_rule: str
    """The reaper's EventBridge schedule rule (:mod:`control_plane.standby`)."""
    events_mapping: str | None
    """The events queue's Lambda event source mapping (UUID), where there is one."""
    storage_bucket: str
    storage_role_arn: str
    """The role whose credentials, narrowed to one user's prefix, pods get ("": no storage)."""
    storage_quota_mb: int
    storage_credentials_seconds: int
    aws_endpoint_url: str | None
    pod_aws_endpoint_url: str | None
    region: str
    session_seconds: int
    node_silent_seconds: int
    transition_timeout_seconds: int
    reconcile_grace_seconds: int
    """How long a node and the records may disagree about an instance before it is repaired
    (:mod:`control_plane.reconcile`)."""
    join_token_seconds: int
    node_credentials_seconds: int
    tunnel_token_seconds: int
    """Life of the tunnel tokens the portal signs (at most
    ``protocol.tokens.TUNNEL_TOKEN_MAX_LIFETIME``); the node renews them at half-life."""
    login_failures_per_account: int
    login_failures_per_address: int
    login_providers: str = ""
    """``DIT4C_LOGIN_PROVIDERS``: JSON list, see :mod:`control_plane.login_providers`."""
    registry: str = ""
    registry_url: str = ""
    pod_registry_url: str = ""
    registry_service: str = DEFAULT_SERVICE
    export_url: str = ""
    export_link_seconds: int = 3600
    helpers_image: str = ""
    """``DIT4C_HELPERS_IMAGE``: the helpers image nodes run, on this deployment's image server and
    pinned by digest (``<registry>/dit4c/helpers:<version>@sha256:...``); "" when none is
    published (nodes then use their own build)."""

    @property
    def storage_endpoint_url(self) -> str | None:
        """S3 as pods reach it (None on AWS)."""
        return self.pod_aws_endpoint_url or self.aws_endpoint_url

    @property
    def secure_cookies(self) -> bool:
        return self.portal_url.startswith("https://")

    def instance_hostname(self, instance_id: str) -> str:
        return instance_host(instance_id, self.router_domain)

    def instance_url(self, instance_id: str) -> str:
        port = f":{self.router_public_port}" if self.router_public_port else ""
        return f"{self.router_scheme}://{self.instance_hostname(instance_id)}{port}"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Config:
        source = os.environ if env is None else env
        missing = [name for name in REQUIRED if not source.get(name)]
        if missing:
            raise ConfigError(f"missing setting(s): {', '.join(missing)}")

        def get(name: str) -> str:
            return source.get(name) or DEFAULTS[name]

        def number(name: str, minimum: int = 1) -> int:
            text = get(name)
            try:
                value = int(text)
            except ValueError:
                raise ConfigError(f"{name} must be an integer, not {text!r}") from None
            if value < minimum:
                raise ConfigError(f"{name} must be at least {minimum}")
            return value

        portal_url = _url(source["DIT4C_PORTAL_URL"], "DIT4C_PORTAL_URL")
        pod_portal = source.get("DIT4C_POD_PORTAL_URL")
        scheme = get("DIT4C_ROUTER_SCHEME")
        if scheme not in ("http", "https"):
            raise ConfigError("DIT4C_ROUTER_SCHEME must be http or https")
        port_text = source.get("DIT4C_ROUTER_PUBLIC_PORT")
        port = None
        if port_text:
            port = number("DIT4C_ROUTER_PUBLIC_PORT")
            if port > 65535:
                raise ConfigError("DIT4C_ROUTER_PUBLIC_PORT must be a port number")
        registry = source.get("DIT4C_REGISTRY", "").strip()
        if registry and ("/" in registry or not registry.strip(":")):
            raise ConfigError(f"DIT4C_REGISTRY must be host[:port], not {registry!r}")
        registry_url = source.get("DIT4C_REGISTRY_URL", "").strip()
        registry_url = _url(registry_url, "DIT4C_REGISTRY_URL") if registry_url \
            else (f"https://{registry}" if registry else "")
        pod_registry = source.get("DIT4C_POD_REGISTRY_URL", "").strip()
        export_url = source.get("DIT4C_EXPORT_URL", "").strip()
        tunnels = tuple(u.strip() for u in get("DIT4C_ROUTER_TUNNEL_URLS").split(",") if u.strip())
        for url in tunnels:
            if urlsplit(url).scheme not in ("ws", "wss"):
                raise ConfigError(f"DIT4C_ROUTER_TUNNEL_URLS: {url!r} is not a ws:// or wss:// URL")
        return cls(
            portal_url=portal_url,
            pod_portal_url=_url(pod_portal, "DIT4C_POD_PORTAL_URL") if pod_portal else portal_url,
            router_domain=source["DIT4C_ROUTER_DOMAIN"].strip(".").lower(),
            router_scheme=scheme,
            router_public_port=port,
            router_tunnel_urls=tunnels,
            max_running_per_user=number("DIT4C_MAX_RUNNING_PER_USER"),
            tables=Tables(
                users=source["DIT4C_USERS_TABLE"],
                sessions=source["DIT4C_SESSIONS_TABLE"],
                images=source["DIT4C_IMAGES_TABLE"],
                instances=source["DIT4C_INSTANCES_TABLE"],
                shares=source["DIT4C_SHARES_TABLE"],
                clusters=source["DIT4C_CLUSTERS_TABLE"],
                nodes=source["DIT4C_NODES_TABLE"],
                tokens=source["DIT4C_TOKENS_TABLE"],
                oauth_clients=source["DIT4C_OAUTH_CLIENTS_TABLE"],
                revocations=source["DIT4C_REVOCATIONS_TABLE"],
            ),
            events_queue_url=source["DIT4C_EVENTS_QUEUE_URL"],
            events_queue_arn=source["DIT4C_EVENTS_QUEUE_ARN"],
            node_commands_dlq_arn=source["DIT4C_NODE_COMMANDS_DLQ_ARN"],
            node_queue_prefix=source["DIT4C_NODE_QUEUE_PREFIX"],
            node_role_arn=source["DIT4C_NODE_ROLE_ARN"],
            revocations_topic_arn=source["DIT4C_REVOCATIONS_TOPIC_ARN"],
            signing_key_parameter=source["DIT4C_SIGNING_KEY_PARAMETER"],
            reaper_rule=source["DIT4C_REAPER_RULE"],
            events_mapping=source.get("DIT4C_EVENTS_MAPPING") or None,
            storage_bucket=get("DIT4C_STORAGE_BUCKET"),
            storage_role_arn=get("DIT4C_STORAGE_ROLE_ARN"),
            storage_quota_mb=number("DIT4C_STORAGE_QUOTA_MB"),
            # STS's range: 15 minutes to the role's maximum (an hour).
            storage_credentials_seconds=min(
                number("DIT4C_STORAGE_CREDENTIALS_SECONDS", 900), 3600),
            aws_endpoint_url=source.get("DIT4C_AWS_ENDPOINT_URL") or None,
            pod_aws_endpoint_url=source.get("DIT4C_POD_AWS_ENDPOINT_URL") or None,
            region=source.get("AWS_REGION") or get("AWS_DEFAULT_REGION"),
            session_seconds=number("DIT4C_SESSION_HOURS") * 3600,
            node_silent_seconds=number("DIT4C_NODE_SILENT_SECONDS"),
            transition_timeout_seconds=number("DIT4C_TRANSITION_TIMEOUT_SECONDS"),
            reconcile_grace_seconds=number("DIT4C_RECONCILE_GRACE_SECONDS"),
            join_token_seconds=number("DIT4C_JOIN_TOKEN_HOURS") * 3600,
            node_credentials_seconds=number("DIT4C_NODE_CREDENTIALS_SECONDS", 900),
            tunnel_token_seconds=min(number("DIT4C_TUNNEL_TOKEN_SECONDS", 2),
                                     TUNNEL_TOKEN_MAX_LIFETIME),
            login_failures_per_account=number("DIT4C_LOGIN_FAILURES_PER_ACCOUNT"),
            login_failures_per_address=number("DIT4C_LOGIN_FAILURES_PER_ADDRESS"),
            login_providers=source.get("DIT4C_LOGIN_PROVIDERS", ""),
            registry=registry,
            registry_url=registry_url,
            pod_registry_url=_url(pod_registry, "DIT4C_POD_REGISTRY_URL") if pod_registry
            else registry_url,
            registry_service=get("DIT4C_REGISTRY_SERVICE"),
            export_url=_url(export_url, "DIT4C_EXPORT_URL") if export_url else "",
            export_link_seconds=number("DIT4C_EXPORT_LINK_SECONDS", 60),
            helpers_image=_pinned_image(source.get("DIT4C_HELPERS_IMAGE", "").strip(),
                                        "DIT4C_HELPERS_IMAGE"),
        )


def _pinned_image(value: str, name: str) -> str:
    if not value:
        return ""
    try:
        reference = parse_reference(value)
    except RegistryError as exc:
        raise ConfigError(f"{name}: {exc}") from None
    if reference.digest is None:
        raise ConfigError(f"{name} must name its digest (...@sha256:...), not {value!r}")
    return value


def _url(value: str, name: str) -> str:
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"{name} must be an http(s) URL, not {value!r}")
    return value.strip().rstrip("/")
