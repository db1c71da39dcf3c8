"""The auth helper's settings, read once from the environment (names in :mod:`protocol.pod`)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from helpers.auth.errors import ConfigError
from protocol import pod
from protocol.ids import ID_PATTERN, is_id


@dataclass(frozen=True)
class AuthConfig:
    listen_host: str
    listen_port: int
    upstream: str
    """The tool's base URL, no trailing slash: ``http://127.0.0.1:8888``."""
    instance_id: str
    public_url: str
    """The instance as browsers see it, no trailing slash."""
    client_id: str
    client_secret: str
    authorize_url: str
    token_url: str
    jwks_url: str

    @property
    def redirect_uri(self) -> str:
        return self.public_url + pod.CALLBACK_PATH

    @property
    def secure(self) -> bool:
        """Under https the cookies are ``Secure`` and use the ``__Host-`` prefix."""
        return self.public_url.startswith("https://")

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> AuthConfig:
        def need(name: str) -> str:
            value = env.get(name, "").strip()
            if not value:
                raise ConfigError(f"{name} is not set")
            return value

        def url(name: str, *, path: bool = True) -> str:
            value = need(name).rstrip("/")
            parts = urlsplit(value)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ConfigError(f"{name} must be an http(s) URL, not {value!r}")
            if not path and (parts.path or parts.query or parts.fragment):
                raise ConfigError(f"{name} must be scheme://host[:port] only, not {value!r}")
            return value

        instance_id = need(pod.ENV_INSTANCE_ID)
        if not is_id(instance_id):
            # The id names the audience of the access tokens this helper accepts.
            raise ConfigError(f"{pod.ENV_INSTANCE_ID} must be an id ({ID_PATTERN}), "
                              f"not {instance_id!r}")
        listen = need(pod.ENV_AUTH_LISTEN)
        host, sep, port = listen.rpartition(":")
        if not sep or not host or not port.isdigit() or int(port) > 65535:
            raise ConfigError(f"{pod.ENV_AUTH_LISTEN} must be host:port, not {listen!r}")
        return cls(
            listen_host=host.strip("[]"),
            listen_port=int(port),
            upstream=url(pod.ENV_AUTH_UPSTREAM, path=False),
            instance_id=instance_id,
            public_url=url(pod.ENV_PUBLIC_URL, path=False),
            client_id=need(pod.ENV_OAUTH_CLIENT_ID),
            client_secret=need(pod.ENV_OAUTH_CLIENT_SECRET),
            authorize_url=url(pod.ENV_OAUTH_AUTHORIZE_URL),
            token_url=url(pod.ENV_OAUTH_TOKEN_URL),
            jwks_url=url(pod.ENV_OAUTH_JWKS_URL),
        )
