"""Build the Lambda deployment artifact: ``build/lambda.zip`` (``make package``).

``python -m infra.package [--arch arm64|x86_64] [--out PATH]``

What goes in, for the runtime and architecture ``template.yaml``'s ``Globals.Function`` names:

- every requirement of ``requirements.txt``, as binary wheels for that platform
  (``pip install --target --platform --python-version --only-binary=:all:``), except Chalice:
  of Chalice only its runtime, ``chalice/__init__.py`` and ``chalice/app.py``, as
  ``chalice package`` does (the CLI and its dependencies never run on Lambda);
- botocore's and boto3's models cut to the services the functions call
  (:data:`control_plane.aws.SERVICES`), which is most of botocore's size;
- ``control_plane/`` (with the portal's files) and ``protocol/``;
- bytecode compiled by an interpreter of the runtime's version when one is found (Lambda's
  ``/var/task`` is read-only, so without it every cold start compiles every module).

The requirements part is cached under ``build/lambda-deps/<hash>/`` (hash of the requirements,
platform and this recipe), so a rebuild after a code change takes a second. The zip is
deterministic (sorted entries, fixed timestamps). The size is printed against the goal.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from control_plane.aws import SERVICES
from infra.local.template import Template

REPO_ROOT: Final = Path(__file__).resolve().parent.parent
BUILD: Final = REPO_ROOT / "build"
DEFAULT_OUT: Final = BUILD / "lambda.zip"
SOURCES: Final = ("control_plane", "protocol")
GOAL_BYTES: Final = 10 * 1024 * 1024
"""The goal for the zipped artifact: 10 MiB."""
RECIPE_VERSION: Final = "2"
"""Bump to invalidate every cached requirements tree when this recipe changes."""

_PLATFORMS: Final = {
    # Lambda's python3.12+ runtimes run Amazon Linux 2023 (glibc 2.34).
    "arm64": ("manylinux_2_34_aarch64", "manylinux_2_28_aarch64", "manylinux2014_aarch64"),
    "x86_64": ("manylinux_2_34_x86_64", "manylinux_2_28_x86_64", "manylinux2014_x86_64"),
}
_CHALICE_RUNTIME: Final = ("chalice/__init__.py", "chalice/app.py")
_FIXED_TIME: Final = (2020, 1, 1, 0, 0, 0)


class PackageError(Exception):
    """The artifact cannot be built; the message says why."""


@dataclass(frozen=True)
class Target:
    """The Lambda runtime the artifact is for."""

    python: str
    """``3.13``."""
    arch: str
    """``arm64`` or ``x86_64``."""

    @classmethod
    def from_template(cls, path: Path = REPO_ROOT / "template.yaml",
                      arch: str | None = None) -> Target:

        function = Template.load(path).document.get("Globals", {}).get("Function", {})
        runtime = str(function.get("Runtime", ""))
        match = re.fullmatch(r"python(3\.\d+)", runtime)
        if match is None:
            raise PackageError(f"template.yaml: Globals.Function.Runtime {runtime!r} is not "
                               "a Python runtime")
        archs = function.get("Architectures") or ["x86_64"]
        chosen = arch or str(archs[0])
        if chosen not in _PLATFORMS:
            raise PackageError(f"architecture {chosen!r}: expected one of {sorted(_PLATFORMS)}")
        return cls(python=match.group(1), arch=chosen)


def host_arch() -> str:
    """This machine's architecture in Lambda's words (to run an artifact here)."""
    return {"aarch64": "arm64", "arm64": "arm64"}.get(os.uname().machine, "x86_64")


def find_python(version: str) -> Path | None:
    """An interpreter of ``version``: ``$DIT4C_LAMBDA_PYTHON``, ``pythonX.Y`` on PATH, pyenv."""
    given = os.environ.get("DIT4C_LAMBDA_PYTHON")
    candidates = [Path(given)] if given else []
    found = shutil.which(f"python{version}")
    if found:
        candidates.append(Path(found))
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    if pyenv.is_dir():
        candidates += sorted(pyenv.glob(f"{version}.*/bin/python{version}"), reverse=True)
    for candidate in candidates:
        # Asked, not trusted: a pyenv shim on PATH exists but may refuse to run.
        answer = subprocess.run(
            [str(candidate), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True, text=True, check=False)
        if answer.returncode == 0 and answer.stdout.strip() == version:
            return candidate
    return None


def _requirements(path: Path) -> tuple[list[str], str | None]:
    """(the pip requirement lines, Chalice's pinned requirement or None)."""
    lines, chalice = [], None
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("-"):
            raise PackageError(f"{path.name}: options such as {line!r} are not supported here")
        name = re.split(r"[<>=!~\[; ]", line, maxsplit=1)[0].lower()
        if name == "chalice":
            chalice = line
        else:
            lines.append(line)
    return lines, chalice


def _pip(target: Path, requirements: list[str], platform: Target, *, no_deps: bool = False
         ) -> None:
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
               "--target", str(target), "--python-version", platform.python,
               "--implementation", "cp", "--only-binary=:all:"]
    for tag in _PLATFORMS[platform.arch]:
        command += ["--platform", tag]
    if no_deps:
        command.append("--no-deps")
    result = subprocess.run([*command, *requirements], capture_output=True, text=True,
                            check=False)
    if result.returncode != 0:
        lines = [line for line in result.stderr.splitlines() if "is ignored" not in line]
        raise PackageError("pip could not install the requirements for "
                           f"python{platform.python} {platform.arch}:\n" + "\n".join(lines[-15:]))


def _prune_models(tree: Path, services: frozenset[str]) -> None:
    for package in ("botocore", "boto3"):
        data = tree / package / "data"
        if not data.is_dir():
            continue
        for entry in data.iterdir():
            if entry.is_dir() and entry.name not in services:
                shutil.rmtree(entry)


def requirements_tree(requirements: Path, platform: Target) -> Path:
    """The installed, pruned requirements for ``platform`` (cached by content)."""

    lines, chalice = _requirements(requirements)
    key = hashlib.sha256("\n".join([RECIPE_VERSION, platform.python, platform.arch,
                                    *sorted(SERVICES), chalice or "", *lines]).encode())
    tree = BUILD / "lambda-deps" / key.hexdigest()[:16]
    if tree.is_dir():
        return tree
    tree.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=tree.parent) as scratch:
        work = Path(scratch) / "tree"
        _pip(work, lines, platform)
        if chalice:
            whole = Path(scratch) / "chalice"
            _pip(whole, [chalice], platform, no_deps=True)
            for name in _CHALICE_RUNTIME:
                (work / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(whole / name, work / name)
        shutil.rmtree(work / "bin", ignore_errors=True)
        _prune_models(work, SERVICES)
        for cache in list(work.rglob("__pycache__")):
            shutil.rmtree(cache)
        _compile(work, platform)
        work.rename(tree)
    return tree


def _compile(tree: Path, platform: Target) -> None:
    python = find_python(platform.python)
    if python is not None:
        # unchecked-hash: valid whatever mtimes the unzipped files get.
        subprocess.run([str(python), "-m", "compileall", "-q", "-j", "0",
                        "--invalidation-mode", "unchecked-hash", str(tree)], check=True)


def stage(requirements: Path, platform: Target, into: Path) -> Path:
    """Lay the artifact's files out in ``into`` (made fresh) and compile their bytecode."""
    if into.exists():
        shutil.rmtree(into)
    shutil.copytree(requirements_tree(requirements, platform), into)
    for source in SOURCES:
        shutil.copytree(REPO_ROOT / source, into / source,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        _compile(into / source, platform)
    return into


def _files(root: Path) -> Iterator[Path]:
    for path in sorted(root.rglob("*")):
        if path.is_file():
            yield path


def write_zip(tree: Path, out: Path) -> int:
    """Zip ``tree`` deterministically into ``out``; returns the zip's size in bytes."""
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as archive:
        for path in _files(tree):
            info = zipfile.ZipInfo(path.relative_to(tree).as_posix(), _FIXED_TIME)
            info.external_attr = 0o644 << 16  # Lambda needs world-readable files
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, path.read_bytes(), compresslevel=6)
    partial.replace(out)
    return out.stat().st_size


def build(out: Path = DEFAULT_OUT, *, arch: str | None = None,
          requirements: Path = REPO_ROOT / "requirements.txt") -> tuple[Path, int, Target]:
    platform = Target.from_template(arch=arch)
    tree = stage(requirements, platform, out.with_suffix(""))
    size = write_zip(tree, out)
    return out, size, platform


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", choices=sorted(_PLATFORMS),
                        help="default: the template's first Architectures entry")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    try:
        out, size, platform = build(args.out, arch=args.arch)
    except PackageError as exc:
        print(f"make package: {exc}", file=sys.stderr)
        return 1
    compiled = "with bytecode" if find_python(platform.python) else (
        f"WITHOUT bytecode (no python{platform.python} here: slower cold starts)")
    verdict = "within" if size <= GOAL_BYTES else "OVER"
    print(f"{out.relative_to(REPO_ROOT) if out.is_relative_to(REPO_ROOT) else out}: "
          f"{size / 2**20:.1f} MiB zipped ({verdict} the {GOAL_BYTES / 2**20:.0f} MiB goal), "
          f"python{platform.python} {platform.arch}, {compiled}")
    return 0 if size <= GOAL_BYTES else 1


if __name__ == "__main__":
    sys.exit(main())
