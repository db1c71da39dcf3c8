"""The demo tool catalog the local stack loads: tools this machine can run without a registry."""

from __future__ import annotations

from control_plane.bodies import NewImage
from scripts import images


def demo_catalog() -> list[NewImage]:
    """The entries ``ensure_local_defaults`` upserts."""
    return [
        NewImage(
            name="Test tool (busybox httpd)",
            image=images.TEST_TOOL,
            port=images.TEST_TOOL_PORT,
            cpu=0.5,
            memory_mb=64,
            tags=["demo"],
        ),
        NewImage(
            name="JupyterLab 4.6",
            image=images.JUPYTERLAB,
            port=images.JUPYTERLAB_PORT,
            cpu=1.0,
            memory_mb=1024,
            tags=["demo", "jupyter"],
        ),
    ]
