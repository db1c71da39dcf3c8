"""requirements.txt and requirements-dev.txt, written from pyproject.toml's dependency groups.

``[project.optional-dependencies]`` is the one list of what each part needs (``control-plane``,
``router``, ``node``, ``helpers``, the ``protocol`` they share, ``local`` for the local stack,
``dev`` for the suite); a group may include others as ``dit4c[group, ...]``. The files are
what the tools read:

- ``requirements.txt``: the ``control-plane`` group and nothing else, what the Lambda
  functions are built with;
- ``requirements-dev.txt``: every group, the development environment ``make venv`` installs;
- ``requirements-node.txt``: the ``node`` group, the dependencies of the package ``make dist``
  builds (pyproject.toml reads them as its dynamic ``dependencies``).

    python -m scripts.requirements              # write both files
    python -m scripts.requirements --check      # exit 1 when either differs from pyproject.toml
    python -m scripts.requirements --group node # print one part's requirements (an image build)

``tests/unit/test_requirements.py`` runs the check, so a group edited without the files fails
the suite.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

ROOT: Final = Path(__file__).resolve().parent.parent
PROJECT: Final = "dit4c"
LAMBDA_GROUP: Final = "control-plane"
LAMBDA_FILE: Final = "requirements.txt"
DEV_FILE: Final = "requirements-dev.txt"
NODE_GROUP: Final = "node"
NODE_FILE: Final = "requirements-node.txt"
_REQUIREMENT = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)(?:\[(?P<extras>[^\]]*)\])?"
                          r"(?P<pin>==\S+)?$")
_WRITTEN_BY = "Written by `python -m scripts.requirements`; edit pyproject.toml, not this file."


class RequirementsError(Exception):
    """The groups are inconsistent: an unknown group, an unpinned or twice-pinned package."""


def canonical(name: str) -> str:
    """PEP 503's normalised project name: ``PyJWT`` -> ``pyjwt``, ``prometheus_client`` ->
    ``prometheus-client``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def load_groups(pyproject: Path = ROOT / "pyproject.toml") -> dict[str, list[str]]:
    data: dict[str, Any] = tomllib.loads(pyproject.read_text())
    groups: dict[str, list[str]] = data["project"]["optional-dependencies"]
    return groups


def expand(groups: Mapping[str, list[str]], *names: str) -> dict[str, str]:
    """The requirements of ``names`` with every ``dit4c[...]`` followed: canonical project name
    -> requirement as written (``moto[server]==5.2.5``)."""
    found: dict[str, str] = {}
    pending, seen = list(names), set()
    while pending:
        group = pending.pop()
        if group in seen:
            continue
        seen.add(group)
        if group not in groups:
            raise RequirementsError(f"no dependency group {group!r} in pyproject.toml")
        for text in groups[group]:
            match = _REQUIREMENT.match(text.replace(" ", ""))
            if match is None:
                raise RequirementsError(f"{group}: {text!r} is not name[extras]==version")
            extras = [e for e in (match["extras"] or "").split(",") if e]
            if canonical(match["name"]) == PROJECT:
                pending.extend(extras)
                continue
            if match["pin"] is None:
                raise RequirementsError(f"{group}: {text!r} is not pinned (==version)")
            key = canonical(match["name"])
            if found.setdefault(key, text) != text:
                raise RequirementsError(f"{match['name']} is required both as {found[key]!r} "
                                        f"and as {text!r}: one version per package")
    return found


def render(groups: Mapping[str, list[str]]) -> dict[str, str]:
    """File name -> the text it must hold."""
    for_lambda = expand(groups, LAMBDA_GROUP)
    for_node = expand(groups, NODE_GROUP)
    everything = expand(groups, *groups)
    rest = {k: v for k, v in everything.items() if k not in for_lambda}
    return {
        LAMBDA_FILE: "\n".join([
            f"# What the Lambda functions import, and nothing else: pyproject.toml's "
            f"`{LAMBDA_GROUP}` group.",
            f"# {_WRITTEN_BY}",
            *(for_lambda[k] for k in sorted(for_lambda)), ""]),
        DEV_FILE: "\n".join([
            "# The development environment (`make venv`): every group of pyproject.toml's",
            "# [project.optional-dependencies], the Lambda's through requirements.txt.",
            f"# {_WRITTEN_BY}",
            f"-r {LAMBDA_FILE}",
            *(rest[k] for k in sorted(rest)), ""]),
        NODE_FILE: "\n".join([
            f"# The node daemon package's dependencies (`make dist`): pyproject.toml's "
            f"`{NODE_GROUP}` group.",
            f"# {_WRITTEN_BY}",
            *(for_node[k] for k in sorted(for_node)), ""]),
    }


def stale(root: Path = ROOT) -> list[str]:
    """The files that differ from what pyproject.toml makes."""
    wanted = render(load_groups(root / "pyproject.toml"))
    return [name for name, text in wanted.items()
            if not (root / name).exists() or (root / name).read_text() != text]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 when a file is out of date")
    parser.add_argument("--group", help="write nothing; print this group's requirements")
    args = parser.parse_args(argv)
    try:
        if args.group:
            print("\n".join(v for _, v in sorted(expand(load_groups(), args.group).items())))
            return 0
        wanted = render(load_groups())
        outdated = stale()
    except RequirementsError as exc:
        print(f"requirements: {exc}", file=sys.stderr)
        return 2
    if args.check:
        for name in outdated:
            print(f"requirements: {name} is out of date; run python -m scripts.requirements",
                  file=sys.stderr)
        return 1 if outdated else 0
    for name in outdated:
        (ROOT / name).write_text(wanted[name])
        print(f"wrote {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
