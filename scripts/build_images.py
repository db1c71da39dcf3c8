"""Build the local images without pulling anything; reuse an image whose recipe is unchanged.

``python -m scripts.build_images [--force] [NAME ...]`` (``make images``) makes sure these exist,
in this order (names in :mod:`scripts.images`):

- ``dit4c/test-tool:busybox`` — Debian's static busybox in an otherwise empty root filesystem,
  made into an image with ``docker import``. Under a second.
- ``dit4c/helper-base:bookworm`` — ``debootstrap --variant=minbase`` of bookworm with the
  Python packages the helpers need, imported with ``docker import``. Minutes the first time; the
  root filesystem tarball is cached (``$DIT4C_CACHE_DIR``, default ``~/.cache/dit4c``) so a
  removed image, or a fresh clone, comes back in seconds.
- ``dit4c/helpers:dev`` — ``helpers/Dockerfile`` built FROM the base with a context holding only
  ``protocol/`` and ``helpers/`` (no pull: the base is local).
- ``dit4c/jupyterlab:4.6`` — JupyterLab and ipykernel in a virtualenv on the base's Python. The
  wheels of ``scripts/jupyterlab/requirements.txt`` (every dependency pinned) are downloaded on
  the host with pip into the cache (containers cannot reach PyPI over TLS); a container of the
  base with no network installs them with ``--no-index`` from a read-only mount, and is
  committed as the image. About a minute the first time; the wheels stay in the cache.
- ``dit4c/router:dev`` — the edge router: ``edge_router/Dockerfile`` built FROM the base with a
  context holding the Dockerfile, ``protocol/``, ``edge_router/`` and the wheels of
  pyproject.toml's ``router`` group (their dependencies at the versions this environment runs,
  so the image runs what the tests ran), downloaded on the host as JupyterLab's are and
  installed with ``--no-index`` in a build stage that the image leaves behind.
- ``dit4c/node:dev`` — the node daemon: ``node_daemon/Dockerfile`` built FROM the base with a
  context holding the Dockerfile, ``make dist``'s wheel and its dependencies' wheels
  (``scripts/dist.py``, downloaded once into the cache), installed into a virtualenv in a build
  stage that the image leaves behind.

Every image carries the label ``dit4c.recipe=<sha256>`` of what it was built from (file bytes,
package lists, the base image id). An image whose label matches is reused; anything else is
rebuilt. The recipes are deterministic (fixed mtimes and owners in the tarballs), so the same
sources always give the same hash.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors

from scripts import dist, images, requirements

log = logging.getLogger("dit4c.scripts.build_images")

REPO_ROOT = Path(__file__).resolve().parent.parent
BUSYBOX = Path("/bin/busybox")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
SUITE = "bookworm"
BASE_PACKAGES = (
    "python3",
    "python3-aiohttp",
    "python3-jwt",
    "python3-cryptography",
    # debootstrap resolves no virtual packages: python3-cryptography needs the cffi backend
    # through python3-cffi-backend-api-*, so name the real package.
    "python3-cffi-backend",
    "python3-yaml",
    "python3-boto3",
    "ca-certificates",
)
# Bump when the base image's post-debootstrap steps change (the package list is hashed anyway).
BASE_RECIPE_VERSION = 2
TOOL_INDEX = b"""<!doctype html>
<html><head><meta charset="utf-8"><title>dit4c test tool</title></head>
<body><h1>dit4c test tool</h1><p>busybox httpd is serving this page.</p></body></html>
"""
HELPER_SOURCES = ("protocol", "helpers")
DEBOOTSTRAP_TIMEOUT = 1800
JUPYTERLAB_REQUIREMENTS = REPO_ROOT / "scripts" / "jupyterlab" / "requirements.txt"
BASE_PYTHON = "3.11.2"
"""The base image's python3 (bookworm): wheels are chosen for it, not for the host's Python."""
BASE_GLIBC_MINOR = 36
"""Bookworm's glibc is 2.36: any manylinux_2_N wheel with N <= 36 runs on it."""
JUPYTERLAB_INSTALL = """set -e
python3 -m venv --without-pip /opt/jupyterlab
set -- /wheels/pip-*.whl  # pip runs from its own wheel: the base image has no pip
/opt/jupyterlab/bin/python "$1/pip" install --no-index --find-links /wheels \
    --no-cache-dir --disable-pip-version-check --quiet -r /wheels/requirements.txt
useradd --create-home --uid 1000 --shell /bin/bash jovyan
"""
JUPYTERLAB_CHANGES = (
    "ENV PATH=/opt/jupyterlab/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "ENV SHELL=/bin/bash",
    "USER jovyan",
    "WORKDIR /home/jovyan",
    f"EXPOSE {images.JUPYTERLAB_PORT}",
    f"LABEL {images.PORT_LABEL}={images.JUPYTERLAB_PORT}",
    # No token, no password: the pod's auth helper is the only way in (docs/helpers.md).
    f'CMD ["jupyter", "lab", "--ip=0.0.0.0", "--port={images.JUPYTERLAB_PORT}", "--no-browser", '
    '"--IdentityProvider.token=", "--ServerApp.allow_remote_access=True"]',
)
JUPYTERLAB_TIMEOUT = 900
ROUTER_SOURCES = ("protocol", "edge_router")
ROUTER_PIP = "pip==25.3"
"""The pip that installs the router's wheels in the build stage (the base has none)."""


class BuildError(Exception):
    """Root exception of the image builder: an image could not be made."""


@dataclass(frozen=True)
class Result:
    """What :class:`ImageBuilder` did for one image."""

    name: str
    recipe: str
    action: str  # "reused", "imported from cache", "built"
    seconds: float

    def __str__(self) -> str:
        return f"{self.name}: {self.action} in {self.seconds:.2f}s (recipe {self.recipe[:12]})"


def default_cache_dir() -> Path:
    """Where slow artefacts (the base rootfs tarball) outlive a checkout."""
    if env := os.environ.get("DIT4C_CACHE_DIR"):
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "dit4c"


def debian_mirror(suite: str = SUITE, etc_apt: Path = Path("/etc/apt")) -> str:
    """The Debian mirror for ``suite``: ``DIT4C_DEBIAN_MIRROR``, else apt's, else deb.debian.org."""
    env = os.environ.get("DIT4C_DEBIAN_MIRROR")
    return env or configured_mirror(suite, etc_apt) or DEFAULT_MIRROR


def configured_mirror(suite: str, etc_apt: Path = Path("/etc/apt")) -> str | None:
    """The first enabled ``deb`` source for ``suite`` in apt's configuration, or None.

    Reads one-line ``sources.list`` entries and deb822 ``*.sources`` files.
    """
    files = [etc_apt / "sources.list", *sorted((etc_apt / "sources.list.d").glob("*"))]
    for path in files:
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        if path.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields = _deb822(stanza)
                if (
                    "deb" in fields.get("types", "").split()
                    and suite in fields.get("suites", "").split()
                    and fields.get("enabled", "yes").lower() != "no"
                ):
                    return fields["uris"].split()[0].rstrip("/")
        elif path.suffix == ".list" or path.name == "sources.list":
            for line in text.splitlines():
                words = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).split()
                if len(words) >= 3 and words[0] == "deb" and words[2] == suite:
                    return words[1].rstrip("/")
    return None


def _deb822(stanza: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    key = None
    for line in stanza.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        if line[0].isspace() and key:
            fields[key] += " " + line.strip()
        elif ":" in line:
            key, _, value = line.partition(":")
            key = key.strip().lower()
            fields[key] = value.strip()
    return fields


class _Tar:
    """A deterministic tarball built in memory: same entries, same bytes."""

    def __init__(self) -> None:
        self.buffer = io.BytesIO()
        # Closed by close(), which also hands back the bytes.
        self.tar = tarfile.open(  # noqa: SIM115
            fileobj=self.buffer, mode="w", format=tarfile.PAX_FORMAT
        )

    def _info(self, name: str, kind: bytes, mode: int) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.type, info.mode, info.mtime, info.uid, info.gid = kind, mode, 0, 0, 0
        return info

    def dir(self, name: str, mode: int = 0o755) -> None:
        self.tar.addfile(self._info(name, tarfile.DIRTYPE, mode))

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        info = self._info(name, tarfile.REGTYPE, mode)
        info.size = len(data)
        self.tar.addfile(info, io.BytesIO(data))

    def symlink(self, name: str, target: str) -> None:
        info = self._info(name, tarfile.SYMTYPE, 0o777)
        info.linkname = target
        self.tar.addfile(info)

    def tree(self, root: Path, arcname: str) -> None:
        """Add ``root`` (files and folders, sorted) skipping caches and dot files."""
        self.dir(arcname)
        for path in sorted(root.rglob("*")):
            rel = path.relative_to(root)
            if any(p.startswith(".") or p == "__pycache__" for p in rel.parts):
                continue
            name = f"{arcname}/{rel.as_posix()}"
            if path.is_dir():
                self.dir(name)
            elif path.is_file() and path.suffix != ".pyc":
                self.file(name, path.read_bytes(), 0o755 if os.access(path, os.X_OK) else 0o644)

    def close(self) -> bytes:
        self.tar.close()
        return self.buffer.getvalue()


def _sha256(*parts: bytes | str) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode() if isinstance(part, str) else part)
        digest.update(b"\0")
    return digest.hexdigest()


class ImageBuilder:
    """Makes each local image exist with the recipe of the current sources.

    ``client`` is a docker SDK client (``docker.from_env()``); ``repo_root`` holds
    ``protocol/``, ``helpers/`` and ``helpers/Dockerfile``; ``cache_dir`` keeps the base
    rootfs tarball across checkouts; ``work_dir`` takes debootstrap's scratch tree.
    """

    def __init__(
        self,
        client: docker.DockerClient,
        *,
        repo_root: Path = REPO_ROOT,
        cache_dir: Path | None = None,
        work_dir: Path | None = None,
        mirror: str | None = None,
    ) -> None:
        self.client = client
        self.repo_root = repo_root
        self.cache_dir = cache_dir or default_cache_dir()
        self.work_dir = work_dir or repo_root / "build"
        self.mirror = mirror

    # -- shared -----------------------------------------------------------------------------

    def current_recipe(self, name: str) -> str | None:
        """The recipe label of image ``name``, or None when there is no such image."""
        try:
            image = self.client.images.get(name)
        except docker.errors.ImageNotFound:
            return None
        labels: dict[str, str] = image.labels or {}
        return labels.get(images.RECIPE_LABEL)

    def _import(self, name: str, recipe: str, src: Any, changes: list[str]) -> None:
        """``docker import`` ``src`` (tar bytes or a tarball path) as ``name``, labelled."""
        repository, tag = name.rsplit(":", 1)
        changes = [*changes, f"LABEL {images.RECIPE_LABEL}={recipe}"]
        out = self.client.api.import_image(
            src=src, repository=repository, tag=tag, changes=changes
        )
        if self.current_recipe(name) != recipe:
            text = out if isinstance(out, str) else json.dumps(out)
            raise BuildError(f"docker import of {name} failed: {text[:500]}")

    # -- dit4c/test-tool:busybox --------------------------------------------------------------

    def test_tool_rootfs(self) -> bytes:
        """The test tool's root filesystem: busybox, its applet links, /www/index.html."""
        if not BUSYBOX.is_file():
            raise BuildError(f"{BUSYBOX} is missing: apt-get install busybox-static (make deps)")
        applets = subprocess.run(
            [str(BUSYBOX), "--list"], check=True, capture_output=True, text=True, timeout=10
        ).stdout.split()
        tar = _Tar()
        for folder in ("bin", "etc", "www"):
            tar.dir(folder)
        tar.dir("tmp", 0o1777)
        tar.file("bin/busybox", BUSYBOX.read_bytes(), 0o755)
        for applet in sorted(set(applets) - {"busybox"}):
            tar.symlink(f"bin/{applet}", "busybox")
        tar.file("etc/passwd", b"root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n")
        tar.file("etc/group", b"root:x:0:\nnogroup:x:65534:\n")
        tar.file("www/index.html", TOOL_INDEX)
        return tar.close()

    def test_tool(self, force: bool = False) -> Result:
        started = time.monotonic()
        rootfs = self.test_tool_rootfs()
        port = images.TEST_TOOL_PORT
        changes = [
            f'CMD ["/bin/busybox", "httpd", "-f", "-p", "{port}", "-h", "/www"]',
            f"EXPOSE {port}",
            f"LABEL {images.PORT_LABEL}={port}",
            "ENV PATH=/bin",
        ]
        recipe = _sha256(rootfs, *changes)
        if not force and self.current_recipe(images.TEST_TOOL) == recipe:
            return Result(images.TEST_TOOL, recipe, "reused", time.monotonic() - started)
        self._import(images.TEST_TOOL, recipe, rootfs, changes)
        return Result(images.TEST_TOOL, recipe, "built", time.monotonic() - started)

    # -- dit4c/helper-base:bookworm -----------------------------------------------------------

    def helper_base_recipe(self) -> str:
        return _sha256(
            SUITE, "minbase", ",".join(sorted(BASE_PACKAGES)), str(BASE_RECIPE_VERSION),
            images.HELPERS_USER, str(images.HELPERS_UID),
        )

    def helper_base(self, force: bool = False) -> Result:
        started = time.monotonic()
        recipe = self.helper_base_recipe()
        if not force and self.current_recipe(images.HELPER_BASE) == recipe:
            return Result(images.HELPER_BASE, recipe, "reused", time.monotonic() - started)
        tarball = self.cache_dir / f"helper-base-{recipe[:16]}.tar"
        action = "imported from cache"
        if force or not tarball.is_file():
            self._debootstrap(tarball)
            action = "built"
        changes = [
            "ENV LANG=C.UTF-8",
            "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            'CMD ["python3"]',
        ]
        self._import(images.HELPER_BASE, recipe, str(tarball), changes)
        return Result(images.HELPER_BASE, recipe, action, time.monotonic() - started)

    def _debootstrap(self, tarball: Path) -> None:
        """debootstrap the base into a scratch tree, add the helpers' user, tar it to the cache."""
        if os.geteuid() != 0:
            raise BuildError("building the helper base needs root (debootstrap and chroot)")
        if not shutil.which("debootstrap"):
            raise BuildError("debootstrap is missing: apt-get install debootstrap (make deps)")
        mirror = self.mirror or debian_mirror()
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        root = Path(tempfile.mkdtemp(prefix="helper-base-", dir=self.work_dir))
        try:
            log.info("debootstrap %s from %s into %s (takes a few minutes)", SUITE, mirror, root)
            try:
                _run(
                    [
                        "debootstrap", "--variant=minbase",
                        f"--include={','.join(BASE_PACKAGES)}", SUITE, str(root), mirror,
                    ],
                    timeout=DEBOOTSTRAP_TIMEOUT,
                )
            except BuildError as exc:
                saved = self.work_dir / "debootstrap.log"
                if (root / "debootstrap" / "debootstrap.log").is_file():
                    shutil.copyfile(root / "debootstrap" / "debootstrap.log", saved)
                raise BuildError(f"{exc}\n(full log: {saved})") from exc
            self._upgrade(root, mirror)
            uid = str(images.HELPERS_UID)
            _run(["chroot", str(root), "groupadd", "--system", "--gid", uid, images.HELPERS_USER])
            _run([
                "chroot", str(root), "useradd", "--system", "--uid", uid, "--gid", uid,
                "--home-dir", "/nonexistent", "--no-create-home", "--shell", "/usr/sbin/nologin",
                images.HELPERS_USER,
            ])
            # Caches and logs only make the image bigger and its hash noisier.
            for pattern in ("var/cache/apt/*.bin", "var/cache/apt/archives/*.deb",
                            "var/lib/apt/lists/*_*", "var/log/*.log", "var/log/apt/*"):
                for path in root.glob(pattern):
                    if path.is_file():
                        path.unlink()
            partial = tarball.with_suffix(".partial")
            _run(["tar", "--numeric-owner", "-C", str(root), "-cf", str(partial), "."])
            partial.replace(tarball)
            for old in self.cache_dir.glob("helper-base-*.tar"):
                if old != tarball:
                    old.unlink()  # one recipe at a time: each is ~180 MB
        finally:
            _run(["rm", "-rf", "--one-file-system", str(root)])

    def _upgrade(self, root: Path, mirror: str) -> None:
        """Point the image's apt at bookworm, -updates and -security, and apply the updates.

        debootstrap installs from the release alone; the helpers face the network, so they get
        the security fixes that were out when the base was built.
        """
        sources = [f"deb {mirror} {SUITE} main", f"deb {mirror} {SUITE}-updates main"]
        if security := configured_mirror(f"{SUITE}-security"):
            sources.append(f"deb {security} {SUITE}-security main")
        else:
            log.warning("no %s-security source in /etc/apt: base built without it", SUITE)
        (root / "etc" / "apt" / "sources.list").write_text("\n".join(sources) + "\n")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        _run(["chroot", str(root), "apt-get", "update", "-qq"], env=env)
        _run(["chroot", str(root), "apt-get", "upgrade", "-y", "-qq"], env=env)

    # -- dit4c/helpers:dev --------------------------------------------------------------------

    def helpers_context(self) -> bytes:
        """The build context: the Dockerfile plus protocol/ and helpers/, nothing else."""
        tar = _Tar()
        tar.file("Dockerfile", (self.repo_root / "helpers" / "Dockerfile").read_bytes())
        for folder in HELPER_SOURCES:
            tar.tree(self.repo_root / folder, folder)
        return tar.close()

    def pin(self, name: str, recipe: str) -> str:
        """Tag the image ``name`` (built from ``recipe``) also as :func:`pinned` and return that
        name: a checkout that runs its own helpers on a shared engine uses it, since another
        checkout may move ``name`` to its own build at any moment."""
        tagged = pinned(name, recipe)
        if self.current_recipe(tagged) != recipe:
            repository, tag = tagged.rsplit(":", 1)
            self.client.images.get(name).tag(repository, tag)
        return tagged

    def base_id(self) -> str:
        """The id of the helpers' base image, which every image built FROM it is pinned to."""
        try:
            return str(self.client.images.get(images.HELPER_BASE).id)
        except docker.errors.ImageNotFound as exc:
            raise BuildError(f"{images.HELPER_BASE} is missing: build it first") from exc

    def helpers(self, force: bool = False) -> Result:
        started = time.monotonic()
        base_id = self.base_id()
        context = self.helpers_context()
        return self._build(images.HELPERS, _sha256(context, base_id), context, force, started)

    # -- dit4c/jupyterlab:4.6 -----------------------------------------------------------------

    def jupyterlab_wheels(self) -> Path:
        """The pinned wheels (and the requirements file) in the cache, downloaded once."""
        return self.wheels("jupyterlab", JUPYTERLAB_REQUIREMENTS.read_bytes())

    def wheels(self, kind: str, requirements: bytes, constraints: bytes = b"") -> Path:
        """The wheels of ``requirements`` (``constraints`` pinning what they pull in) for the
        base's Python, with the requirements file as ``requirements.txt``; downloaded once into
        the cache (``<kind>-wheels-<hash>``)."""
        machine = platform.machine()
        key = _sha256(requirements, *([constraints] if constraints else []), BASE_PYTHON,
                      machine)
        folder = self.cache_dir / f"{kind}-wheels-{key[:16]}"
        if (folder / "requirements.txt").is_file():
            return folder
        partial = folder.with_suffix(".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        platforms = [f"--platform=manylinux_2_{minor}_{machine}"
                     for minor in range(5, BASE_GLIBC_MINOR + 1)]
        log.info("pip download of the %s wheels into %s", kind, folder)
        with tempfile.TemporaryDirectory() as scratch:
            wanted, pinned_by = Path(scratch) / "requirements.txt", Path(scratch) / "pins.txt"
            wanted.write_bytes(requirements)
            pinned_by.write_bytes(constraints)
            _run([sys.executable, "-m", "pip", "download", "--quiet",
                  "--disable-pip-version-check", "--dest", str(partial), "--only-binary=:all:",
                  "--implementation=cp", f"--python-version={BASE_PYTHON}", "--abi=cp311",
                  "--abi=abi3", "--abi=none", *platforms, "-r", str(wanted),
                  "-c", str(pinned_by)], timeout=900)
        # Written last: a folder with its requirements file is complete.
        (partial / "requirements.txt").write_bytes(requirements)
        partial.rename(folder)
        for old in self.cache_dir.glob(f"{kind}-wheels-*"):
            if old != folder:
                shutil.rmtree(old, ignore_errors=True)  # one recipe at a time: ~50 MB each
        return folder

    def jupyterlab(self, force: bool = False) -> Result:
        started = time.monotonic()
        base_id = self.base_id()
        recipe = _sha256(JUPYTERLAB_REQUIREMENTS.read_bytes(), base_id, JUPYTERLAB_INSTALL,
                         *JUPYTERLAB_CHANGES)
        if not force and self.current_recipe(images.JUPYTERLAB) == recipe:
            return Result(images.JUPYTERLAB, recipe, "reused", time.monotonic() - started)
        wheels = self.jupyterlab_wheels()
        container = self.client.containers.run(
            images.HELPER_BASE, ["sh", "-c", JUPYTERLAB_INSTALL], detach=True, user="root",
            network_mode="none", volumes={str(wheels): {"bind": "/wheels", "mode": "ro"}},
            labels={"dit4c.build": images.JUPYTERLAB},
        )
        try:
            status = container.wait(timeout=JUPYTERLAB_TIMEOUT)["StatusCode"]
            if status != 0:
                tail = container.logs(tail=40).decode(errors="replace")
                raise BuildError(f"installing JupyterLab exited {status}:\n{tail}")
            repository, tag = images.JUPYTERLAB.rsplit(":", 1)
            container.commit(repository, tag, changes=[
                *JUPYTERLAB_CHANGES, f"LABEL {images.RECIPE_LABEL}={recipe}"])
        finally:
            container.remove(force=True)
        if self.current_recipe(images.JUPYTERLAB) != recipe:
            raise BuildError(f"committing {images.JUPYTERLAB} left no image")
        return Result(images.JUPYTERLAB, recipe, "built", time.monotonic() - started)

    # -- dit4c/router:dev ---------------------------------------------------------------------

    def router_wheels(self) -> Path:
        """The router group's wheels; what they depend on at the versions installed here."""
        groups = requirements.load_groups(self.repo_root / "pyproject.toml")
        wanted = sorted(requirements.expand(groups, "router").values(), key=str.lower)
        frozen = subprocess.run(
            [sys.executable, "-m", "pip", "freeze", "--exclude-editable",
             "--disable-pip-version-check"],
            check=True, capture_output=True, text=True, timeout=60).stdout
        constraints = "".join(line + "\n" for line in sorted(frozen.splitlines())
                              if "==" in line and not line.startswith("-"))
        return self.wheels("router", "\n".join([*wanted, ROUTER_PIP, ""]).encode(),
                           constraints.encode())

    def router_context(self, wheels: Path) -> bytes:
        """The build context: the Dockerfile, the wheels, protocol/ and edge_router/."""
        tar = _Tar()
        tar.file("Dockerfile", (self.repo_root / "edge_router" / "Dockerfile").read_bytes())
        tar.tree(wheels, "wheels")
        for folder in ROUTER_SOURCES:
            tar.tree(self.repo_root / folder, folder)
        return tar.close()

    def router(self, force: bool = False) -> Result:
        started = time.monotonic()
        base_id = self.base_id()
        context = self.router_context(self.router_wheels())
        recipe = _sha256(context, base_id)
        return self._build(images.ROUTER, recipe, context, force, started)

    # -- dit4c/node:dev -------------------------------------------------------------------------

    def node_sources(self) -> bytes:
        """What the node package is made from (its recipe): pyproject.toml, the node group's
        requirements, node_daemon/, protocol/ and the Dockerfile."""
        tar = _Tar()
        for name in ("pyproject.toml", dist.NODE_FILE, "node_daemon/Dockerfile"):
            tar.file(name, (self.repo_root / name).read_bytes())
        for folder in dist.PACKAGES:
            tar.tree(self.repo_root / folder, folder)
        return tar.close()

    def node(self, force: bool = False) -> Result:
        started = time.monotonic()
        base_id = self.base_id()
        # The recipe is the sources: the wheel and its context are made only to build.
        recipe = _sha256(self.node_sources(), base_id)
        if not force and self.current_recipe(images.NODE) == recipe:
            self.pin(images.NODE, recipe)
            return Result(images.NODE, recipe, "reused", time.monotonic() - started)
        try:
            wheels = dist.dependency_wheels(self.cache_dir)
            with tempfile.TemporaryDirectory(prefix="dit4c-node-image-") as scratch:
                wheel = dist.build_wheel(Path(scratch))
                tar = _Tar()
                tar.file("Dockerfile",
                         (self.repo_root / "node_daemon" / "Dockerfile").read_bytes())
                tar.tree(wheels, "wheels")
                tar.file(f"wheels/{wheel.name}", wheel.read_bytes())
                context = tar.close()
        except dist.DistError as exc:
            raise BuildError(str(exc)) from exc
        return self._build(images.NODE, recipe, context, force, started)

    def _build(self, name: str, recipe: str, context: bytes, force: bool,
               started: float) -> Result:
        """``docker build`` of ``context`` as ``name`` (and its pinned tag), unless an image of
        ``recipe`` is there already."""
        if not force and self.current_recipe(name) == recipe:
            self.pin(name, recipe)
            return Result(name, recipe, "reused", time.monotonic() - started)
        if not force and self.current_recipe(pinned(name, recipe)) == recipe:
            # Another checkout moved the name: this recipe's image is still here.
            repository, tag = name.rsplit(":", 1)
            self.client.images.get(pinned(name, recipe)).tag(repository, tag)
            return Result(name, recipe, "reused", time.monotonic() - started)
        stream = self.client.api.build(
            fileobj=io.BytesIO(context), custom_context=True, tag=name, pull=False,
            rm=True, forcerm=True, labels={images.RECIPE_LABEL: recipe}, decode=True,
        )
        lines = []
        for chunk in stream:
            if "error" in chunk:
                raise BuildError(f"docker build of {name} failed: {chunk['error']}")
            lines.append(str(chunk.get("stream", "")))
        if self.current_recipe(name) != recipe:
            raise BuildError(f"docker build of {name} left no image:\n{''.join(lines)}")
        self.pin(name, recipe)
        return Result(name, recipe, "built", time.monotonic() - started)

    # -- all ------------------------------------------------------------------------------------

    def steps(self) -> dict[str, Callable[[bool], Result]]:
        """Image name -> builder, in dependency order."""
        return {
            images.TEST_TOOL: self.test_tool,
            images.HELPER_BASE: self.helper_base,
            images.HELPERS: self.helpers,
            images.JUPYTERLAB: self.jupyterlab,
            images.ROUTER: self.router,
            images.NODE: self.node,
        }

    def ensure(self, names: Iterable[str] = images.ALL, force: bool = False) -> list[Result]:
        wanted = set(names)
        unknown = wanted - set(self.steps())
        if unknown:
            raise BuildError(f"unknown image(s): {', '.join(sorted(unknown))}")
        return [step(force) for name, step in self.steps().items() if name in wanted]


def pinned(name: str, recipe: str) -> str:
    """``repository:r-<recipe prefix>``: a tag that only ever names one recipe's image."""
    return f"{name.rsplit(':', 1)[0]}:r-{recipe[:12]}"


def _run(argv: list[str], timeout: float = 300, env: dict[str, str] | None = None) -> None:
    """Run a command; on failure raise BuildError carrying the end of its output."""
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, check=False, env=env
        )
    except subprocess.TimeoutExpired as exc:
        raise BuildError(f"{argv[0]} timed out after {timeout}s") from exc
    if done.returncode != 0:
        tail = (done.stdout + done.stderr)[-3000:]
        raise BuildError(f"{' '.join(argv[:3])} ... exited {done.returncode}:\n{tail}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "names", nargs="*", help=f"images to make (default: {' '.join(images.ALL)})"
    )
    parser.add_argument(
        "--force", action="store_true", help="rebuild even when the recipe matches"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="build_images: %(message)s")
    try:
        client = docker.from_env(timeout=600)
        results = ImageBuilder(client).ensure(args.names or images.ALL, force=args.force)
    except (BuildError, docker.errors.DockerException) as exc:
        print(f"build_images: {exc}", file=sys.stderr)
        return 1
    for result in results:
        print(f"build_images: {result}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
