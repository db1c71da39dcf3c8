"""``make dist``: the node daemon's wheel under ``dist/``, and its dependencies' wheels for
installs with no index.

    python -m scripts.dist                   # dist/dit4c-<version>-py3-none-any.whl
    python -m scripts.dist --with-deps DIR   # also every dependency's wheel (and pip's) in DIR

The wheel is what ``pip install git+<repository URL>`` builds too: pyproject.toml's
``[build-system]`` with only ``node_daemon/`` and ``protocol/`` and the ``node`` dependency group
(``requirements-node.txt``). It is built from a copy of exactly those files in a scratch
directory, so the build leaves nothing in the checkout and two builds can run at once.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import Final

from scripts.requirements import NODE_FILE, ROOT

__all__ = ["DIST", "NODE_FILE", "PACKAGES", "DistError", "build_wheel", "dependency_wheels"]

DIST: Final = ROOT / "dist"
PACKAGES: Final = ("node_daemon", "protocol")
SOURCES: Final = ("pyproject.toml", NODE_FILE, *PACKAGES)
BUILD_TIMEOUT: Final = 300


class DistError(Exception):
    """The wheel could not be built; the message carries the end of pip's output."""


def version() -> str:
    value: str = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    return value


def wheel_name() -> str:
    return f"dit4c-{version()}-py3-none-any.whl"


def build_wheel(out_dir: Path = DIST) -> Path:
    """Build the wheel into ``out_dir`` (replacing one of the same version); its path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="dit4c-dist-") as scratch:
        source = Path(scratch) / "src"
        source.mkdir()
        for name in SOURCES:
            path = ROOT / name
            if path.is_dir():
                shutil.copytree(path, source / name,
                                ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                shutil.copy2(path, source / name)
        built = Path(scratch) / "out"
        # No build isolation: setuptools is in the virtualenv, and the build needs no network.
        _pip("wheel", "--no-deps", "--no-build-isolation", "--wheel-dir", str(built),
             str(source))
        (wheel,) = built.glob("*.whl")
        target = out_dir / wheel.name
        shutil.move(wheel, target)
    return target


def dependency_wheels(folder: Path) -> Path:
    """Every dependency's wheel for this machine's Python (and pip's own, which can install
    from its wheel file), downloaded once into ``folder/<hash of the requirements>``: an
    install from there needs no index (the node image's build, a clean virtualenv in tests)."""
    requirements = (ROOT / NODE_FILE).read_bytes()
    target = folder / ("node-wheels-" + hashlib.sha256(requirements).hexdigest()[:16])
    if (target / NODE_FILE).is_file():
        return target
    partial = target.with_suffix(".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    _pip("download", "--quiet", "--only-binary=:all:", "--dest", str(partial),
         "-r", str(ROOT / NODE_FILE), "pip")
    (partial / NODE_FILE).write_bytes(requirements)  # last: a folder with it is complete
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    return target


def _pip(*args: str) -> None:
    argv = [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=BUILD_TIMEOUT,
                              check=False)
    except subprocess.TimeoutExpired as exc:
        raise DistError(f"pip {args[0]} timed out after {BUILD_TIMEOUT} s") from exc
    if done.returncode != 0:
        raise DistError(f"pip {args[0]} exited {done.returncode}:\n"
                        f"{(done.stdout + done.stderr)[-3000:]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=DIST, help="where the wheel goes")
    parser.add_argument("--with-deps", type=Path, default=None, metavar="DIR",
                        help="also download the dependencies' wheels under DIR")
    args = parser.parse_args(argv)
    try:
        print(f"dist: {build_wheel(args.out)}")
        if args.with_deps is not None:
            print(f"dist: dependencies in {dependency_wheels(args.with_deps)}")
    except DistError as exc:
        print(f"dist: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
