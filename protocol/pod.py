"""What a pod is made of (contract between the node daemon and the helpers).

The node daemon starts each helper from the helpers image (``dit4c/helpers:dev`` locally) with
``python3 -m helpers.<name>`` and hands it exactly the settings below as environment variables;
a helper reads only its own, and the tool container gets none of them. All containers of a pod
share one network namespace (held by the ``netns`` container), so they talk over ``127.0.0.1``.

The listener runs the auth helper in its own process: given the auth helper's settings too, it
hands every tunnel stream to the auth gate in-process (one loopback hop fewer on every
request), and the gate also listens on ``AUTH_PORT``::

    edge router <-tunnel- listener + auth (AUTH_PORT) --http/ws--> tool (its own port)

``python3 -m helpers.auth`` still runs the auth helper alone (tests; a listener given
``DIT4C_UPSTREAM`` instead forwards each stream to it over TCP).
"""

from __future__ import annotations

from typing import Final

AUTH_PORT: Final = 7781
"""The auth helper's listening port inside the pod (the readiness probe waits for it)."""

CALLBACK_PATH: Final = "/.dit4c/auth/callback"
"""The auth helper's OAuth2 redirect path; the portal registers ``<instance URL><this>``."""

LOGOUT_PATH: Final = "/.dit4c/auth/logout"

REVOKE_PATH: Final = "/.dit4c/auth/revoke"
"""Back-channel: the portal POSTs a revocation token (``protocol.tokens.revocation_claims``)
here, through the router, to end a user's sessions at once when their access is revoked."""

# --- roles (label dit4c.role) ---------------------------------------------------------------
ROLE_TOOL: Final = "tool"
ROLE_LISTENER: Final = "listener"
ROLE_AUTH: Final = "auth"
"""Pods made before the listener ran the auth helper had an ``auth`` container."""
ROLE_STORAGE: Final = "storage"
ROLE_UPLOAD: Final = "upload"
ROLE_NETNS: Final = "netns"
"""The namespace holder: the helpers image running ``sleep infinity``; the others join it."""

# --- labels on every container, network and volume of a pod ---------------------------------
LABEL_INSTANCE: Final = "dit4c.instance"
LABEL_ROLE: Final = "dit4c.role"
LABEL_NODE: Final = "dit4c.node"

# --- listener helper (python3 -m helpers.listener) ------------------------------------------
ENV_TUNNEL_TOKEN: Final = "DIT4C_TUNNEL_TOKEN"  # noqa: S105 - a variable name
ENV_ROUTER_URLS: Final = "DIT4C_ROUTER_URLS"
"""Comma-separated tunnel endpoints (``ws://host:port/.dit4c/tunnel``); the listener dials all."""
ENV_HOSTNAME: Final = "DIT4C_HOSTNAME"
"""The instance's public host without port, as bound in the tunnel token."""
ENV_UPSTREAM: Final = "DIT4C_UPSTREAM"
"""Without the auth settings: where the listener sends each stream over TCP (``host:port``)."""
ENV_TUNNEL_TOKEN_FILE: Final = "DIT4C_TUNNEL_TOKEN_FILE"  # noqa: S105 - a variable name
"""Optional: a file the listener watches for renewed tunnel tokens (it sends each to the routers
over its tunnels). The node daemon writes it with ``python3 -m helpers.listener renew`` (an exec
in the listener container, the token in ``ENV_TUNNEL_TOKEN``)."""
TUNNEL_TOKEN_FILE: Final = "/run/dit4c/tunnel-token"  # noqa: S105 - a path
"""Where the node has the listener keep it: on a tmpfs only the listener's user can read."""
HELPERS_UID: Final = 10001
"""The unprivileged user (``dit4c``) the helpers image runs as."""

# --- auth helper (python3 -m helpers.auth) --------------------------------------------------
ENV_AUTH_LISTEN: Final = "DIT4C_AUTH_LISTEN"
"""``127.0.0.1:<AUTH_PORT>``."""
ENV_AUTH_UPSTREAM: Final = "DIT4C_AUTH_UPSTREAM"
"""The tool: ``http://127.0.0.1:<tool port>``."""
ENV_INSTANCE_ID: Final = "DIT4C_INSTANCE_ID"
ENV_PUBLIC_URL: Final = "DIT4C_PUBLIC_URL"
"""The instance's public URL as browsers see it, e.g. ``http://abc.localhost:8080``."""
ENV_OAUTH_CLIENT_ID: Final = "DIT4C_OAUTH_CLIENT_ID"
ENV_OAUTH_CLIENT_SECRET: Final = "DIT4C_OAUTH_CLIENT_SECRET"  # noqa: S105
ENV_OAUTH_AUTHORIZE_URL: Final = "DIT4C_OAUTH_AUTHORIZE_URL"
"""Browser-facing: ``<portal URL><OAUTH_AUTHORIZE_PATH>``."""
OAUTH_AUTHORIZE_PATH: Final = "/oauth/authorize"
"""The portal's authorize endpoint. The portal URL before it is the ``iss`` of every token the
portal signs for the helper (access tokens, revocations): :func:`portal_issuer`."""
ENV_OAUTH_TOKEN_URL: Final = "DIT4C_OAUTH_TOKEN_URL"  # noqa: S105
"""Pod-facing (the portal as the pod reaches it, e.g. via host.docker.internal)."""
ENV_OAUTH_JWKS_URL: Final = "DIT4C_OAUTH_JWKS_URL"
"""Pod-facing."""



def portal_issuer(authorize_url: str) -> str:
    """The portal's issuer, from the authorize URL the helper is given; ValueError if that URL
    is not ``<issuer>`` + :data:`OAUTH_AUTHORIZE_PATH`."""
    if not authorize_url.endswith(OAUTH_AUTHORIZE_PATH):
        raise ValueError(f"{authorize_url!r} does not end with {OAUTH_AUTHORIZE_PATH}")
    return authorize_url[:-len(OAUTH_AUTHORIZE_PATH)]


# --- storage helper (python3 -m helpers.storage) --------------------------------------------
ENV_STORAGE: Final = "DIT4C_STORAGE"
"""The start command's ``storage`` object (``protocol.messages.StorageAccess``) as JSON: the one
setting of a pooled helper's bind (:mod:`protocol.sandbox`); in the environment of a helper made
by an earlier release."""
STORAGE_VOLUME_MOUNT: Final = "/mnt"
"""Where the pod's storage volume is, in the storage container and in the tool: the helper
binds it ``rshared`` and mounts the user's storage inside it, the tool binds it ``rslave``
(no privilege) and so sees that mount, and a new one after a restart of the helper."""
STORAGE_MOUNT: Final = "/mnt/storage"
"""The user's storage, as the tool sees it."""
STORAGE_UID: Final = 10001
"""The unprivileged user the storage helper's file server runs as (the helpers image's)."""
STORAGE_READY_FILE: Final = "/run/dit4c/storage-ready"
"""Made in the storage container once the user's storage is mounted; the node daemon waits for
it before it starts the tool. Its folder (``STORAGE_RUN_DIR``) is a tmpfs, empty at every
start."""
STORAGE_RUN_DIR: Final = "/run/dit4c"
STORAGE_STATUS_FILE: Final = "/run/dit4c/storage-status.json"
"""The helper's health, rewritten every few seconds: ``{"ok": bool, "message": str | null,
"usage_bytes": int, "quota_bytes": int | null, "at": RFC 3339}``; the node daemon reads it."""
STORAGE_SESSION_FILE: Final = "/run/dit4c/storage-session.json"
"""Renewed credentials (and quota) from the portal: ``{"credentials": {...}, "quota_bytes":
int | null}``, written by ``python3 -m helpers.storage renew`` that the node daemon runs in the
storage container (as ``STORAGE_UID``) with ``ENV_STORAGE_SESSION``."""
ENV_STORAGE_SESSION: Final = "DIT4C_STORAGE_SESSION"

# --- upload helper (python3 -m helpers.upload) ----------------------------------------------
ENV_UPLOAD: Final = "DIT4C_UPLOAD"
"""JSON: ``{"registry_url", "repository", "tag", "token", "compression": "gzip"|"none",
"source": {"repository", "reference"} | null}`` (``source``: the image the instance was
started from, on the same image server; its layers are mounted); the push token is only in
this container."""
UPLOAD_DIR: Final = "/image"
"""Where the node daemon puts the committed image, ``docker save`` layout (``manifest.json``,
the config, ``<id>/layer.tar``), before it starts the upload helper."""
UPLOAD_RESULT_KEY: Final = "result"
"""The helper's last stdout line is ``{"result": {"digest", "size"}}`` on success or
``{"error": "<reason for people>"}``; before it, ``{"progress": <percent>}`` lines."""

PODS_NETWORK: Final = "dit4c-pods"
"""The bridge network pods join; inter-container traffic is disabled on it."""
