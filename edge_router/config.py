"""The router's one configuration object, read once from the environment at start-up.

=====================================  =========================================  ==========
variable                               meaning                                    default
=====================================  =========================================  ==========
``DIT4C_ROUTER_DOMAIN``                routing domain: instance ``ID`` is          required
                                       ``ID.<domain>``
``DIT4C_ROUTER_LISTEN``                plain HTTP listeners, comma list host:port  127.0.0.1:8080
``DIT4C_ROUTER_TLS_LISTEN``            HTTPS listeners (needs cert and key)        none
``DIT4C_ROUTER_TLS_CERT`` / ``_KEY``   PEM files, a wildcard cert for the domain   none
``DIT4C_ROUTER_METRICS_LISTEN``        Prometheus ``/metrics``, host:port          none (off)
``DIT4C_ROUTER_JWKS_URL``              the control plane's JWKS                    required
``DIT4C_ROUTER_TOKEN_ISSUER``          expected ``iss`` of tunnel tokens           not checked
``DIT4C_ROUTER_REVOCATIONS_QUEUE_URL`` SQS queue of ``Revocation`` messages        none (off)
``DIT4C_ROUTER_REVOCATIONS_URL``       the control plane's revocations list, read  none (off)
                                       at start (tunnels wait for it) and every
                                       5 minutes
``DIT4C_ROUTER_TOKEN_LEEWAY``          seconds of clock skew allowed on tokens     30
``DIT4C_ROUTER_EVENTS_QUEUE_URL``      SQS queue for ``InstanceActivity``          none (off)
``DIT4C_AWS_ENDPOINT_URL``             one endpoint for AWS clients (moto)         AWS default
``DIT4C_ROUTER_ID``                    this router's name in activity reports      hostname
``DIT4C_ROUTER_ACTIVITY_INTERVAL``     seconds between activity reports            60
``DIT4C_ROUTER_MAX_STREAMS``           concurrent streams per tunnel               256
``DIT4C_ROUTER_MAX_STREAMS_PER_CLIENT`` streams one client address may hold on one  64
                                       tunnel (IPv6: per /64)
``DIT4C_ROUTER_MAX_CONNECTIONS_PER_CLIENT`` open connections of one client address  512
``DIT4C_ROUTER_STREAM_IDLE_TIMEOUT``    seconds an idle keep-alive connection keeps 5
                                       its tunnel stream
``DIT4C_ROUTER_BODY_TIMEOUT``           window (s) in which a request body must     20
                                       move at least ``MIN_BODY_RATE`` bytes/s
``DIT4C_ROUTER_MAX_TUNNELS_PER_HOST``  tunnels one hostname may hold               4
``DIT4C_ROUTER_MAX_HEADER_BYTES``      largest request head                        32768
``DIT4C_ROUTER_HEADER_TIMEOUT``        seconds to receive a request head           15
``DIT4C_ROUTER_IDLE_TIMEOUT``          seconds a keep-alive connection may idle    75
``DIT4C_ROUTER_READ_TIMEOUT``          seconds without a byte either way while     300
                                       a request or upgraded connection is open
``DIT4C_ROUTER_HEARTBEAT``             tunnel ping interval, seconds               15
``DIT4C_ROUTER_ACCESS_LOG``            1: one log line per request                 1
=====================================  =========================================  ==========

The per-stream flow-control window is part of the wire format (``protocol.tunnel``), not a
setting: both ends must agree on it. A tunnel therefore holds at most
``MAX_STREAMS * DEFAULT_WINDOW`` bytes of undelivered data in the router.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass

from edge_router.errors import ConfigError

Address = tuple[str, int]


def parse_addresses(name: str, value: str) -> list[Address]:
    addresses = []
    for raw in value.split(","):
        item = raw.strip()
        if not item:
            continue
        host, sep, port = item.rpartition(":")
        if not sep or not port.isdigit() or not host:
            raise ConfigError(f"{name}: {item!r} is not host:port")
        addresses.append((host.strip("[]"), int(port)))
    return addresses


@dataclass(frozen=True, kw_only=True)
class RouterConfig:
    domain: str
    jwks_url: str
    listen: tuple[Address, ...] = (("127.0.0.1", 8080),)
    tls_listen: tuple[Address, ...] = ()
    tls_cert: str | None = None
    tls_key: str | None = None
    metrics_listen: Address | None = None
    token_issuer: str | None = None
    revocations_queue_url: str | None = None
    revocations_url: str | None = None
    token_leeway: int = 30
    events_queue_url: str | None = None
    aws_endpoint_url: str | None = None
    router_id: str = "router"
    activity_interval: float = 60.0
    max_streams: int = 256
    max_streams_per_client: int = 64
    max_connections_per_client: int = 512
    stream_idle_timeout: float = 5.0
    body_timeout: float = 20.0
    max_tunnels_per_host: int = 4
    max_header_bytes: int = 32768
    header_timeout: float = 15.0
    idle_timeout: float = 75.0
    read_timeout: float = 300.0
    heartbeat: float = 15.0
    access_log: bool = True
    jwks_refresh: float = 300.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> RouterConfig:
        env = os.environ if env is None else env

        def get(name: str) -> str | None:
            value = env.get(f"DIT4C_{name}", "").strip()
            return value or None

        def required(name: str) -> str:
            value = get(name)
            if value is None:
                raise ConfigError(f"DIT4C_{name} must be set")
            return value

        def number(name: str, default: float, kind: type = float) -> float:
            value = get(name)
            if value is None:
                return default
            try:
                parsed = kind(value)
            except ValueError:
                raise ConfigError(f"DIT4C_{name}: {value!r} is not a number") from None
            if parsed <= 0:
                raise ConfigError(f"DIT4C_{name} must be positive")
            return float(parsed)

        tls_listen = tuple(parse_addresses("DIT4C_ROUTER_TLS_LISTEN",
                                           get("ROUTER_TLS_LISTEN") or ""))
        cert, key = get("ROUTER_TLS_CERT"), get("ROUTER_TLS_KEY")
        if tls_listen and not (cert and key):
            raise ConfigError("DIT4C_ROUTER_TLS_LISTEN needs DIT4C_ROUTER_TLS_CERT and _KEY")
        metrics = get("ROUTER_METRICS_LISTEN")
        metrics_address = (parse_addresses("DIT4C_ROUTER_METRICS_LISTEN", metrics)[0]
                           if metrics else None)
        listen = tuple(parse_addresses("DIT4C_ROUTER_LISTEN",
                                       get("ROUTER_LISTEN") or "127.0.0.1:8080"))
        if not listen and not tls_listen:
            raise ConfigError("DIT4C_ROUTER_LISTEN names no address")
        return cls(
            domain=required("ROUTER_DOMAIN").lower().strip("."),
            jwks_url=required("ROUTER_JWKS_URL"),
            listen=listen,
            tls_listen=tls_listen,
            tls_cert=cert,
            tls_key=key,
            metrics_listen=metrics_address,
            token_issuer=get("ROUTER_TOKEN_ISSUER"),
            revocations_queue_url=get("ROUTER_REVOCATIONS_QUEUE_URL"),
            revocations_url=get("ROUTER_REVOCATIONS_URL"),
            token_leeway=int(number("ROUTER_TOKEN_LEEWAY", 30, int)),
            events_queue_url=get("ROUTER_EVENTS_QUEUE_URL"),
            aws_endpoint_url=get("AWS_ENDPOINT_URL"),
            router_id=get("ROUTER_ID") or socket.gethostname(),
            activity_interval=number("ROUTER_ACTIVITY_INTERVAL", 60.0),
            max_streams=int(number("ROUTER_MAX_STREAMS", 256, int)),
            max_streams_per_client=int(number("ROUTER_MAX_STREAMS_PER_CLIENT", 64, int)),
            max_connections_per_client=int(number("ROUTER_MAX_CONNECTIONS_PER_CLIENT", 512,
                                                  int)),
            stream_idle_timeout=number("ROUTER_STREAM_IDLE_TIMEOUT", 5.0),
            body_timeout=number("ROUTER_BODY_TIMEOUT", 20.0),
            max_tunnels_per_host=int(number("ROUTER_MAX_TUNNELS_PER_HOST", 4, int)),
            max_header_bytes=int(number("ROUTER_MAX_HEADER_BYTES", 32768, int)),
            header_timeout=number("ROUTER_HEADER_TIMEOUT", 15.0),
            idle_timeout=number("ROUTER_IDLE_TIMEOUT", 75.0),
            read_timeout=number("ROUTER_READ_TIMEOUT", 300.0),
            heartbeat=number("ROUTER_HEARTBEAT", 15.0),
            access_log=(get("ROUTER_ACCESS_LOG") or "1") not in ("0", "false", "no"),
        )
