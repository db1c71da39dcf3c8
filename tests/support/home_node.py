"""A self-hoster's node, as the docs install it: a clean virtualenv holding only the node
package (``make dist``'s wheel and its dependencies, nothing from this checkout on its path),
and the join command an admin copied from the portal, run by a shell against an engine.

Used by ``tests/integration/test_home_node.py`` and ``bench/home_bench.py``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

import docker

from scripts import dist

T = TypeVar("T")
PIP_TIMEOUT = 300
TOOL_PORT = 8080
CACHE_DIR = Path(os.environ.get("DIT4C_CACHE_DIR") or Path.home() / ".cache" / "dit4c")


def node_virtualenv(root: Path) -> Path:
    """A virtualenv under ``root`` with the node wheel installed from local wheels only (the
    dependencies' wheels are downloaded once into the cache); its ``bin`` folder."""
    wheel = dist.build_wheel(root / "dist")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=PIP_TIMEOUT)
    pip_install(venv / "bin", wheel)
    return venv / "bin"


def pip_install(bin_dir: Path, wheel: Path, *args: str) -> None:
    """``pip install`` into the virtualenv from the local wheels only; pip runs from its own
    wheel file, so the virtualenv holds nothing but what is installed."""
    wheels = dist.dependency_wheels(CACHE_DIR)
    (pip,) = wheels.glob("pip-*.whl")
    subprocess.run([str(bin_dir / "python"), str(pip / "pip"), "install", "--quiet",
                    "--disable-pip-version-check", "--no-index", "--find-links", str(wheels),
                    *args, str(wheel)], check=True, timeout=PIP_TIMEOUT, capture_output=True)


def clean_env(bin_dir: Path, home: Path, extra: Mapping[str, str]) -> dict[str, str]:
    """The environment of a machine that has only Python and Docker: no PYTHONPATH, no AWS or
    dit4c settings of this session, the virtualenv first on PATH, its own data home."""
    keep = {k: v for k, v in os.environ.items()
            if not k.startswith(("AWS_", "DIT4C_", "PYTHON", "DOCKER_", "VIRTUAL_ENV"))}
    return {**keep, "PATH": f"{bin_dir}{os.pathsep}{keep.get('PATH', '/usr/bin:/bin')}",
            "HOME": str(home), "XDG_DATA_HOME": str(home / ".local" / "share"), **extra}


class ShellCommand:
    """``bash -c <command>`` in its own process group (so the join-then-run line and every
    process it starts are stopped together), output to ``log``."""

    def __init__(self, command: str, env: Mapping[str, str], cwd: Path, log: Path) -> None:
        self.log = log
        with open(log, "ab") as out:
            self.process = subprocess.Popen(["bash", "-c", command], env=dict(env), cwd=cwd,
                                            stdin=subprocess.DEVNULL, stdout=out,
                                            stderr=subprocess.STDOUT, start_new_session=True)

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM to the group (the daemon finishes what it holds; pods keep running)."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        return self.process.returncode

    def tail(self, chars: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def pids(self) -> set[int]:
        """Every live process of the group."""
        found = set()
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, IndexError, ValueError):
                # Fields after the command name (which may hold spaces): state ppid pgrp ...
                fields = stat.read_text().rsplit(")", 1)[1].split()
                if int(fields[2]) == self.process.pid:
                    found.add(int(stat.parent.name))
        return found


def listening(pids: set[int]) -> list[str]:
    """``address:port`` of every TCP or UDP socket these processes listen on (``ss``)."""
    out = subprocess.run(["ss", "-Hlntup"], capture_output=True, text=True, check=True,
                         timeout=30).stdout
    found = []
    for line in out.splitlines():
        if any(f"pid={pid}," in line for pid in pids):
            found.append(line.split()[4])
    return found


def wait_for(predicate: Callable[[], T | None], what: str, timeout: float,
             log: ShellCommand | None = None, interval: float = 0.5) -> T:
    """Call ``predicate`` until it returns something truthy; AssertionError after ``timeout``
    (with the end of ``log``)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f} s"
                                 + (f"; end of the node's log:\n{log.tail()}" if log else ""))
        time.sleep(interval)


def publish_tool(client: docker.DockerClient, source: str, reference: str, username: str,
                 password: str) -> str:
    """Push ``source`` to an image server as ``reference`` with a user's password (an admin's:
    what ``docker login`` and ``docker push`` do); the local tag is removed again."""
    repository, tag = reference.rsplit(":", 1)
    client.images.get(source).tag(repository, tag)
    try:
        for event in client.api.push(repository, tag=tag, stream=True, decode=True,
                                     auth_config={"username": username, "password": password}):
            if "error" in event:
                raise RuntimeError(f"pushing {reference} failed: {event['error']}")
    finally:
        client.images.remove(reference)
    return reference
