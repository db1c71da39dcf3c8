"""One list of dependencies: pyproject.toml's groups match what each part imports, the
requirement files are written from them, and no part imports another it must not."""

from __future__ import annotations

import ast
import sys
from functools import cache
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from scripts import requirements
from scripts.build_images import BASE_PACKAGES

ROOT = requirements.ROOT
FIRST_PARTY = {"control_plane", "edge_router", "node_daemon", "helpers", "protocol", "infra",
               "scripts", "tests", "bench", "image_export"}
PARTS = {
    # folder: (its dependency group, the first-party packages it may import besides itself)
    "protocol": ("protocol", set()),
    "control_plane": ("control-plane", {"protocol"}),
    "edge_router": ("router", {"protocol"}),
    "node_daemon": ("node", {"protocol"}),
    "helpers": ("helpers", {"protocol"}),
    "image_export": ("image-export", {"protocol"}),
    "infra": ("local", {"control_plane", "edge_router", "node_daemon", "protocol", "scripts"}),
    "scripts": ("local", set()),
    "tests": ("dev", FIRST_PARTY),
    "bench": ("dev", FIRST_PARTY),
}
DEBIAN_NAMES = {"pyjwt": "python3-jwt"}
"""The helper image's Debian package of a PyPI project, where it is not python3-<name>."""


def imports_of(folder: str) -> set[str]:
    """Top-level names of every absolute import in ``folder``'s Python files."""
    names: set[str] = set()
    for path in (ROOT / folder).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names - {"__future__"}


@cache
def closure(project: str, extras: frozenset[str] = frozenset()) -> frozenset[str]:
    """``project`` and everything it needs (with ``extras``), by installed metadata."""
    found = {requirements.canonical(project)}
    for text in metadata.requires(project) or []:
        needed = Requirement(text)
        if needed.marker is not None and not any(
                needed.marker.evaluate({"extra": extra}) for extra in extras or {""}):
            continue
        found |= closure(needed.name, frozenset(needed.extras))
    return frozenset(found)


def provided_by(group: str) -> set[str]:
    groups = requirements.load_groups()
    provided: set[str] = set()
    for text in requirements.expand(groups, group).values():
        needed = Requirement(text)
        provided |= closure(needed.name, frozenset(needed.extras))
    return provided


def test_the_requirement_files_are_written_from_pyproject():
    assert requirements.stale() == [], "run python -m scripts.requirements"


def test_requirements_txt_is_the_lambda_group_alone():
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    pinned = {requirements.canonical(line.split("==")[0]) for line in lines
              if line and not line.startswith("#")}
    assert pinned == {"chalice", "boto3", "pyjwt", "cryptography"}


@pytest.mark.parametrize("folder", sorted(PARTS))
def test_each_part_imports_only_what_its_group_declares(folder: str):
    group, may_import = PARTS[folder]
    names = imports_of(folder)
    first_party = names & FIRST_PARTY - {folder}
    assert first_party <= may_import, f"{folder} imports {sorted(first_party - may_import)}"
    distributions = metadata.packages_distributions()
    provided = provided_by(group)
    third_party = names - FIRST_PARTY - set(sys.stdlib_module_names)
    missing = {name for name in third_party
               if not {requirements.canonical(d) for d in distributions.get(name, [])}
               & provided}
    assert not missing, f"{folder} imports {sorted(missing)}, not in the {group!r} group"


def test_the_helper_image_has_a_debian_package_for_each_helper_dependency():
    groups = requirements.load_groups()
    for project in requirements.expand(groups, "helpers"):
        assert DEBIAN_NAMES.get(project, f"python3-{project}") in BASE_PACKAGES, project


@pytest.mark.parametrize(("groups", "message"), [
    ({"a": ["x==1"], "b": ["x==2"], "c": ["dit4c[a,b]"]}, "one version per package"),
    ({"a": ["x"]}, "not pinned"),
    ({"a": ["dit4c[nope]"]}, "no dependency group 'nope'"),
    ({"a": ["x>=1"]}, "is not name"),
])
def test_inconsistent_groups_are_refused(groups: dict[str, list[str]], message: str):
    with pytest.raises(requirements.RequirementsError, match=message):
        requirements.expand(groups, *groups)


def test_groups_include_each_other_once():
    groups = {"base": ["x==1"], "one": ["dit4c[base]", "y==2"], "all": ["dit4c[one,base]"]}
    assert requirements.expand(groups, "all") == {"x": "x==1", "y": "y==2"}
    written = requirements.render({**groups, "control-plane": ["dit4c[base]"],
                                   "node": ["dit4c[one]"]})
    assert written["requirements.txt"].splitlines()[2:] == ["x==1"]
    assert written["requirements-dev.txt"].splitlines()[3:] == ["-r requirements.txt", "y==2"]
    assert written["requirements-node.txt"].splitlines()[2:] == ["x==1", "y==2"]


def test_one_group_is_printed_for_an_image_build(capsys: pytest.CaptureFixture[str]):
    assert requirements.main(["--group", "node"]) == 0
    printed = capsys.readouterr().out.split()
    assert [requirements.canonical(r.split("==")[0]) for r in printed] == [
        "aiohttp", "boto3", "cryptography", "docker", "prometheus-client", "pyjwt"]
    assert requirements.main(["--group", "nope"]) == 2


def test_a_stale_file_is_reported(tmp_path: Path):
    (tmp_path / "pyproject.toml").write_text(
        '[project.optional-dependencies]\n"control-plane" = ["x==1"]\ndev = ["y==2"]\n'
        'node = ["z==3"]\n')
    (tmp_path / "requirements.txt").write_text("x==1\n")
    assert requirements.stale(tmp_path) == ["requirements.txt", "requirements-dev.txt",
                                            "requirements-node.txt"]
