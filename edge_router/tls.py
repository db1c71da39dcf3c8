"""TLS from certificate files, reloaded in place (``SIGHUP``) without closing anything.

A listening socket keeps the :class:`ssl.SSLContext` it was created with, and a context's
certificate cannot be swapped atomically (``load_cert_chain`` on a live context would pair a new
certificate with the old key if the key file were bad). So the listeners get one *front*
context whose SNI callback, run at the start of every handshake (with or without a server name),
points the connection at the context of the files read last. A reload reads both files into a
new context first; only a complete, matching pair replaces the current one. Connections already
open keep the certificate they shook hands with: nothing is closed, tunnels and client
connections included.
"""

from __future__ import annotations

import datetime
import logging
import ssl
from pathlib import Path

from cryptography import x509

from edge_router.errors import ConfigError

log = logging.getLogger("dit4c.router.tls")


class Certificates:
    """The router's certificate chain and key, from ``cert`` and ``key`` (PEM files)."""

    def __init__(self, cert: str, key: str) -> None:
        self.cert = cert
        self.key = key
        try:
            self._current = self._load()
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise ConfigError(f"DIT4C_ROUTER_TLS_CERT/_KEY: cannot load {cert} and {key}: "
                              f"{exc}") from None
        self.context = self._current
        """What the listeners are given; each handshake moves to the current context."""
        self.context.sni_callback = self._choose

    def _load(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert, self.key)
        self._describe()
        return context

    def _describe(self) -> None:
        """Log what will be served (subject, expiry): an operator's first question."""
        try:
            leaf = x509.load_pem_x509_certificate(Path(self.cert).read_bytes())
        except (OSError, ValueError):
            return  # load_cert_chain accepted it: no reason to refuse over a log line
        left = leaf.not_valid_after_utc - datetime.datetime.now(datetime.UTC)
        log.info("certificate %s for %s, valid until %s (%d days)", self.cert,
                 leaf.subject.rfc4514_string(), leaf.not_valid_after_utc.isoformat(),
                 left.days)

    def _choose(self, connection: ssl.SSLObject | ssl.SSLSocket, server_name: str | None,
                context: ssl.SSLContext) -> None:
        if context is not self._current:
            connection.context = self._current

    def reload(self) -> bool:
        """Read the files again; new handshakes use them. On any error the certificate served
        until now stays, and the error is logged (returns False)."""
        try:
            self._current = self._load()
        except (OSError, ssl.SSLError, ValueError) as exc:
            log.error("TLS reload failed, still serving the previous certificate: %s", exc)
            return False
        log.info("TLS certificate reloaded from %s", self.cert)
        return True
