"""Recipes of the local images: deterministic, and sensitive to what goes into the image."""

from __future__ import annotations

import shutil
from pathlib import Path
from unittest.mock import Mock

import pytest

from scripts import build_images
from scripts.build_images import ImageBuilder

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def builder(tmp_path: Path) -> ImageBuilder:
    for folder in build_images.HELPER_SOURCES:
        shutil.copytree(REPO / folder, tmp_path / folder,
                        ignore=shutil.ignore_patterns("__pycache__"))
    return ImageBuilder(Mock(), repo_root=tmp_path, cache_dir=tmp_path / "cache")


def test_helpers_context_is_deterministic_and_tracks_sources(builder: ImageBuilder):
    first = builder.helpers_context()
    assert builder.helpers_context() == first

    (builder.repo_root / "protocol" / "new_module.py").write_text("X = 1\n")
    assert builder.helpers_context() != first


def test_helpers_context_skips_caches(builder: ImageBuilder):
    first = builder.helpers_context()
    cache = builder.repo_root / "helpers" / "__pycache__"
    cache.mkdir(exist_ok=True)
    (cache / "x.cpython-311.pyc").write_bytes(b"junk")

    assert builder.helpers_context() == first


@pytest.mark.skipif(not build_images.BUSYBOX.is_file(), reason="busybox-static not installed")
def test_tool_rootfs_is_deterministic(builder: ImageBuilder):
    assert builder.test_tool_rootfs() == builder.test_tool_rootfs()


def test_base_recipe_changes_with_packages(builder: ImageBuilder, monkeypatch):
    before = builder.helper_base_recipe()
    monkeypatch.setattr(build_images, "BASE_PACKAGES", (*build_images.BASE_PACKAGES, "curl"))
    assert builder.helper_base_recipe() != before


def test_mirror_from_deb822_sources(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("DIT4C_DEBIAN_MIRROR", raising=False)
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n"
        "Components: main\n\n"
        "Types: deb\n# a comment\nURIs: http://mirror.example/debian/\n"
        "Suites: bookworm bookworm-updates\nComponents: main\n"
    )
    assert build_images.debian_mirror("bookworm", tmp_path) == "http://mirror.example/debian"


def test_mirror_from_one_line_list(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("DIT4C_DEBIAN_MIRROR", raising=False)
    (tmp_path / "sources.list").write_text(
        "# deb http://old.example/debian bookworm main\n"
        "deb [arch=amd64 signed-by=/k.gpg] http://list.example/debian bookworm main\n"
    )
    assert build_images.debian_mirror("bookworm", tmp_path) == "http://list.example/debian"


def test_mirror_falls_back_and_env_wins(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("DIT4C_DEBIAN_MIRROR", raising=False)
    assert build_images.debian_mirror("bookworm", tmp_path) == build_images.DEFAULT_MIRROR
    monkeypatch.setenv("DIT4C_DEBIAN_MIRROR", "http://env.example/debian")
    assert build_images.debian_mirror("bookworm", tmp_path) == "http://env.example/debian"
