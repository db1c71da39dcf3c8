"""The demo tool catalog the local stack loads: tools this machine can run without a registry."""

from __future__ import annotations

import importlib
from typing import Any

from scripts import images


def demo_catalog() -> list[Any]:
    """``control_plane.catalog.CatalogEntry`` values (imported here: the env must be set first)."""
    entry = importlib.import_module("control_plane.catalog").CatalogEntry
    return [
        entry(
            name="Test tool (busybox httpd)",
            image=images.TEST_TOOL,
            port=images.TEST_TOOL_PORT,
            cpu=0.5,
            memory_mb=64,
            tags=["demo"],
        ),
    ]
