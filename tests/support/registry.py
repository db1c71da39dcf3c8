"""The image server as tests run it: Debian's ``docker-registry`` with token authentication.

:class:`RegistryServer` runs ``docker-registry serve`` with the configuration the local stack
writes (``infra.local.registry.write_config``) on a free loopback port; it trusts the CA of the
``KeyStore`` it is given (the control plane's own, or one over ``mock_aws``), and
:meth:`RegistryServer.token` signs tokens the way the portal does (``sign_with_chain``).
"""

from __future__ import annotations

import contextlib
import io
import logging
import subprocess
import tarfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import boto3
import docker
import pytest
from moto.server import ThreadedMotoServer

from control_plane.keys import KeyStore
from helpers.upload.push import UploadSettings, push
from infra.local import registry
from protocol.registry import DEFAULT_SERVICE, PUSH, Access, registry_claims, repository_access
from tests.ports import free_port

ISSUER = "http://portal.test"


@contextlib.contextmanager
def key_store() -> Iterator[KeyStore]:
    """The portal's key store over moto's SSM (a server of its own on loopback)."""
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        ssm = boto3.client("ssm", region_name="us-east-1",
                           endpoint_url=f"http://{host}:{port}", aws_access_key_id="test",
                           aws_secret_access_key="test")
        yield KeyStore(ssm, f"/test-{uuid.uuid4().hex[:8]}/signing-keys", cache_seconds=0)
    finally:
        server.stop()


def require_binary() -> str:
    program = registry.binary()
    if program is None:
        pytest.skip("docker-registry is not installed (make deps installs it)")
    return program


class RegistryServer:
    """One registry process over ``root``; ``address`` is ``127.0.0.1:<port>`` once started."""

    def __init__(self, root: Path, keys: KeyStore, *, issuer: str = ISSUER,
                 service: str = DEFAULT_SERVICE, host: str = "127.0.0.1",
                 port: int | None = None, name: str = "config") -> None:
        self.root = root
        self.keys = keys
        self.issuer = issuer
        self.service = service
        self.address = f"{host}:{port or free_port()}"
        self.name = name
        self.log_path = root / f"{name}.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def config(self) -> Path:
        auth = registry.TokenAuth(realm=f"{self.issuer}/registry/token", service=self.service,
                                  issuer=self.issuer, ca_pem=self.keys.registry_ca().pem())
        return registry.write_config(self.root, self.address, auth, f"{self.name}.yml")

    def beside(self, host: str) -> RegistryServer:
        """Another process over the same storage on ``host`` (same port), as the local stack
        runs one for pods on the pods network's gateway."""
        port = int(self.address.rsplit(":", 1)[1])
        return RegistryServer(self.root, self.keys, issuer=self.issuer, service=self.service,
                              host=host, port=port, name=f"config-{host}")

    def start(self) -> RegistryServer:
        program = require_binary()
        config = self.config()
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen([program, "serve", str(config)],
                                             stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while self.status("/v2/") != 401:  # up, and asking for a token
            assert self._process.poll() is None, f"registry exited:\n{self.log_tail()}"
            assert time.monotonic() < deadline, f"registry did not start:\n{self.log_tail()}"
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            self._process.wait(10)

    def garbage_collect(self) -> str:
        """The offline collector over this storage (stop the server first)."""
        program = require_binary()
        done = subprocess.run(registry.garbage_collect_argv(program, self.root / "config.yml"),
                              capture_output=True, text=True, timeout=120, check=True)
        return done.stdout

    def token(self, access: Sequence[Access], *, subject: str = "test", lifetime: int = 300,
              issuer: str | None = None, service: str | None = None,
              extra: dict[str, Any] | None = None, now: float | None = None) -> str:
        claims = registry_claims(issuer=issuer or self.issuer, service=service or self.service,
                                 subject=subject, access=access, lifetime=lifetime,
                                 extra=extra, now=now)
        return self.keys.sign_with_chain(claims)

    def status(self, path: str, token: str | None = None, method: str = "GET") -> int | None:
        # Distribution answers 404 for an OCI manifest to a client that does not accept one.
        headers = {"Accept": "application/vnd.oci.image.manifest.v1+json, "
                             "application/vnd.docker.distribution.manifest.v2+json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        request = urllib.request.Request(  # noqa: S310 - our own loopback URL
            self.url + path, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
                return int(response.status)
        except urllib.error.HTTPError as exc:
            exc.close()
            return int(exc.code)
        except OSError:
            return None

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"




class _Stream(io.RawIOBase):
    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks, self._buffer = chunks, b""

    def readable(self) -> bool:
        return True

    def readinto(self, target: Any) -> int:
        while not self._buffer:
            try:
                self._buffer = next(self._chunks)
            except StopIteration:
                return 0
        count = min(len(target), len(self._buffer))
        target[:count] = self._buffer[:count]
        self._buffer = self._buffer[count:]
        return count


def save_layout(client: docker.DockerClient, image: str, directory: Path) -> Path:
    """``docker save image`` unpacked into ``directory`` (what the node daemon hands the upload
    helper)."""
    directory.mkdir(parents=True)
    stream = io.BufferedReader(_Stream(iter(client.api.get_image(image))), 1 << 20)
    with tarfile.open(fileobj=stream, mode="r|") as archive:
        archive.extractall(directory, filter="data")
    return directory


def push_image(server: RegistryServer, client: docker.DockerClient, image: str,
               repository: str, directory: Path, *, compression: str = "gzip") -> str:
    """Push ``image`` of ``client``'s engine as ``repository:saved`` with the upload helper's
    code; returns the manifest digest."""
    token = server.token([repository_access(repository, PUSH)])
    settings = UploadSettings(server.url, repository, "saved", token, compression)
    return str(push(settings, save_layout(client, image, directory), lambda p: None)["digest"])
