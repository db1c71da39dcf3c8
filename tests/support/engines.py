"""A second Docker engine on this machine, for tests that need a second node (or a home machine).

:class:`SecondEngine` starts its own ``dockerd`` beside the machine's engine without touching it:

- its own ``--data-root``, ``--exec-root``, ``-H unix://<dir>/docker.sock``, ``--pidfile`` and
  ``--config-file`` (an empty one: ``/etc/docker/daemon.json`` is the first engine's), all under
  one fresh directory;
- its own Linux bridge, made here (``ip link add ... type bridge``) on a ``/24`` of a free
  ``10.X.0.0/16``, passed as ``--bridge``. Never ``--bridge=none``: that makes dockerd delete
  ``docker0``, the first engine's bridge. Its user-defined networks come from
  ``--default-address-pool base=10.X.128.0/17,size=24`` of the same ``/16``; the data root is
  always fresh, so no stale default network can meet that pool (which is what deletes
  ``docker0`` on a restart);
- ``--iptables=false`` (and so no masquerading): at start-up dockerd's bridge driver removes and
  re-creates the ``DOCKER`` and ``DOCKER-ISOLATION-*`` chains, which would wipe the first
  engine's rules. The cost: this engine's containers reach the host's own addresses (the
  gateways of both engines' bridges: traffic to a local address never crosses ``FORWARD``)
  but not beyond the machine, and inter-container isolation (``enable_icc=false``) is not
  enforced on its networks. Both are fine for a second node in tests;
- the daemon dies with the process that started it (``setpriv --pdeathsig TERM``), so a killed
  test session leaves no engine running. Its bridge may stay; it is only a route, and the next
  session picks another ``/16``.

Both engines share the host's network namespace, so a registry on ``127.0.0.1`` is reachable
from both, and Docker trusts ``127.0.0.0/8`` without TLS; ``insecure_registries`` adds others.

Images get onto it by :meth:`SecondEngine.load_from` (``docker save | docker load`` from another
engine, no registry needed) or by :meth:`SecondEngine.pull` (from a registry with a bearer
token: the path a real second node takes).
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import docker
import docker.errors

START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
SUBNET_RANGE = range(200, 250)
"""Candidates for the engine's ``10.X.0.0/16``: the first one no host route touches."""
_LOCK_PATH = Path(tempfile.gettempdir()) / "dit4c-second-engines.lock"


class EngineError(RuntimeError):
    """The second engine could not be started or used; the message says why."""


def _routes() -> list[ipaddress.IPv4Network]:
    out = subprocess.run(["ip", "-4", "route", "show"], capture_output=True, text=True,
                         check=True).stdout
    networks = []
    for line in out.splitlines():
        first = line.split()[0] if line.split() else ""
        if first in ("default", "") or first.startswith(("broadcast", "local")):
            continue
        with contextlib.suppress(ValueError):
            networks.append(ipaddress.ip_network(first, strict=False))
    return [n for n in networks if isinstance(n, ipaddress.IPv4Network)]


def _free_block() -> ipaddress.IPv4Network:
    taken = _routes()
    for x in SUBNET_RANGE:
        block = ipaddress.IPv4Network(f"10.{x}.0.0/16")
        if not any(block.overlaps(route) for route in taken):
            return block
    raise EngineError(f"no free 10.X.0.0/16 for a second engine (X in {SUBNET_RANGE})")


@contextlib.contextmanager
def _machine_lock() -> Iterator[None]:
    """One engine at a time picks its addresses and makes its bridge (other sessions too)."""
    with open(_LOCK_PATH, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class SecondEngine:
    """One extra ``dockerd``; see the module docstring. ``name`` (at most 10 characters of
    ``[a-z0-9]``) names its bridge ``d4c<name>``; ``labels`` go on what it makes itself."""

    def __init__(self, name: str, *, root: Path | None = None,
                 insecure_registries: Sequence[str] = (),
                 labels: Mapping[str, str] | None = None) -> None:
        if not name.isalnum() or not name.islower() or len(name) > 10:
            raise ValueError(f"engine name {name!r}: 1-10 lower-case letters or digits")
        self.name = name
        self.bridge = f"d4c{name}"  # interface names have at most 15 characters
        # Short: the socket paths under it must fit in sun_path (108 bytes).
        self.root = root or Path(tempfile.mkdtemp(prefix=f"d4c-{name}-"))
        self.insecure_registries = list(insecure_registries)
        self.labels = dict(labels or {})
        self.socket = self.root / "docker.sock"
        self.host = f"unix://{self.socket}"
        """What ``DOCKER_HOST`` should be for a process that uses this engine."""
        self.log_path = self.root / "dockerd.log"
        self.block: ipaddress.IPv4Network | None = None
        self.gateway = ""
        """The bridge's address (the host as this engine's default-bridge containers see it)."""
        self._process: subprocess.Popen[bytes] | None = None
        self._client: docker.DockerClient | None = None

    # -- start and stop ------------------------------------------------------------------

    def argv(self) -> list[str]:
        assert self.block is not None
        pool = list(self.block.subnets(new_prefix=17))[1]
        argv = [
            # SIGTERM to dockerd when the process that started it goes away (util-linux).
            "setpriv", "--pdeathsig", "TERM", "dockerd",
            "--data-root", str(self.root / "data"),
            "--exec-root", str(self.root / "exec"),
            "--pidfile", str(self.root / "docker.pid"),
            "--config-file", str(self.root / "daemon.json"),
            "-H", self.host,
            "--bridge", self.bridge,
            "--iptables=false",
            "--ip-masq=false",
            "--userland-proxy=false",
            "--default-address-pool", f"base={pool},size=24",
            "--log-level", "warn",
        ]
        for registry in self.insecure_registries:
            argv += ["--insecure-registry", registry]
        return argv

    def start(self, timeout: float = START_TIMEOUT) -> SecondEngine:
        if shutil.which("dockerd") is None:
            raise EngineError("dockerd is not installed (make deps installs docker.io)")
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "daemon.json").write_text("{}\n")
        with _machine_lock():
            self.block = _free_block()
            self._make_bridge()
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL,
                                             stdout=log, stderr=subprocess.STDOUT)
        try:
            self._wait_answering(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _make_bridge(self) -> None:
        assert self.block is not None
        gateway = next(self.block.hosts())
        self.gateway = str(gateway)
        if Path(f"/sys/class/net/{self.bridge}").exists():
            _ip("link", "delete", self.bridge)  # ours, from a session of the same name
        _ip("link", "add", "name", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{gateway}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")

    def _wait_answering(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self._process is not None
            if self._process.poll() is not None:
                raise EngineError(f"dockerd exited with {self._process.returncode}:\n"
                                  f"{self.log_tail()}")
            if self.socket.exists():
                client = docker.DockerClient(base_url=self.host, timeout=120)
                try:
                    client.ping()
                    self._client = client
                    return
                except docker.errors.DockerException:
                    client.close()
            if time.monotonic() > deadline:
                raise EngineError(f"dockerd did not answer within {timeout:.0f} s:\n"
                                  f"{self.log_tail()}")
            time.sleep(0.1)

    def stop(self) -> None:
        """Stop the daemon (its containers with it), remove its bridge and its directory."""
        if self._client is not None:
            with contextlib.suppress(docker.errors.DockerException):
                for row in self._client.api.containers(all=True, quiet=True):
                    with contextlib.suppress(docker.errors.DockerException):
                        self._client.api.remove_container(row["Id"], force=True, v=True)
            self._client.close()
            self._client = None
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(10)
        if self.block is not None:
            # Its own bridge, and those of its user-defined networks (``br-<id>`` on
            # 10.X.128.0/24s of the block): dockerd leaves them behind when it stops, and
            # every one left takes a 10.X.0.0/16 from the next engines (50 in all).
            for interface in _interfaces_in(self.block) | {self.bridge}:
                if Path(f"/sys/class/net/{interface}").exists():
                    _ip("link", "delete", interface)
        # Mounts of a killed daemon would make rmtree fail; never follow them out of root.
        _unmount_below(self.root)
        shutil.rmtree(self.root, ignore_errors=True)

    # -- using it ------------------------------------------------------------------------

    @property
    def client(self) -> docker.DockerClient:
        if self._client is None:
            raise EngineError("the second engine is not running")
        return self._client

    def env(self) -> dict[str, str]:
        """Environment for a process (a node daemon) that should drive this engine."""
        return {"DOCKER_HOST": self.host}

    def load_from(self, source: docker.DockerClient, images: Iterable[str]) -> None:
        """``docker save`` on ``source`` piped into ``docker load`` here, images absent here
        only (an image of the same name but another id counts as absent)."""
        for image in images:
            wanted = source.images.get(image)
            with contextlib.suppress(docker.errors.ImageNotFound):
                if self.client.images.get(image).id == wanted.id:
                    continue
            for event in self.client.api.load_image(source.api.get_image(image)):
                if "error" in event:
                    raise EngineError(f"loading {image} failed: {event['error']}")

    def pull(self, reference: str, token: str | None = None) -> str:
        """Pull ``reference`` (``host:port/repo:tag`` or ``...@sha256:...``) with a registry
        bearer token; returns the image id. Errors name the reference and the registry's
        answer."""
        auth = {"registrytoken": token} if token else None
        repository, tag = _split(reference)
        for event in self.client.api.pull(repository, tag=tag, stream=True, decode=True,
                                          auth_config=auth):
            if "error" in event:
                raise EngineError(f"pulling {reference} failed: {event['error']}")
        return str(self.client.images.get(reference).id)

    def info(self) -> dict[str, Any]:
        info: dict[str, Any] = self.client.info()
        return info

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"


def _split(reference: str) -> tuple[str, str]:
    if "@" in reference:
        repository, digest = reference.split("@", 1)
        return repository, digest
    slash = reference.rfind("/")
    colon = reference.rfind(":")
    if colon > slash:
        return reference[:colon], reference[colon + 1:]
    return reference, "latest"


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise EngineError(f"ip {' '.join(args)} failed: {done.stderr.strip()}")


def _interfaces_in(block: ipaddress.IPv4Network) -> set[str]:
    """Interfaces with an IPv4 address in ``block``."""
    out = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True,
                         check=True).stdout
    found = set()
    for line in out.splitlines():
        fields = line.split()  # "5: br-1234 inet 10.200.128.1/24 brd ... scope global br-1234"
        with contextlib.suppress(IndexError, ValueError):
            if ipaddress.ip_interface(fields[3]).ip in block:
                found.add(fields[1])
    return found


def _unmount_below(root: Path) -> None:
    prefix = str(root.resolve()) + "/"
    try:
        mounts = [line.split()[4] for line in
                  Path("/proc/self/mountinfo").read_text().splitlines()]
    except OSError:
        return
    for point in sorted((m for m in mounts if m.startswith(prefix)), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)

