"""A node whose helpers image is missing says so in the portal, not only in its log: the
heartbeat carries what is wrong, the control plane keeps it, the node list (the Nodes page)
shows it. With the image there, the same field says ``ok``."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from control_plane.replies import Node
from tests.support.control_plane import ControlPlane, control_plane
from tests.support.node import NodeProcess

pytestmark = [pytest.mark.docker, pytest.mark.timeout(120)]


@pytest.fixture
def portal() -> Iterator[ControlPlane]:
    with control_plane() as plane:
        yield plane


def listed_helpers(portal: ControlPlane, node_id: str, timeout: float = 30) -> str:
    """What the node list says of the node's helpers, once a heartbeat has been applied."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        portal.consume_events()
        node = portal.services.nodes.find(node_id, consistent=True)
        if node is not None and node.helpers is not None:
            return str(Node.of(node).helpers)
        time.sleep(0.3)
    raise AssertionError(f"no heartbeat with a helpers status within {timeout} s")


def test_missing_helpers_are_shown_in_the_node_list(portal: ControlPlane, tmp_path: Path,
                                                    node_settings: dict[str, str]):
    missing = "dit4c/helpers:no-such-build"
    node = NodeProcess(portal, tmp_path / "node", {
        **node_settings, "DIT4C_NODE_HELPERS_IMAGE": missing,
        "DIT4C_NODE_HEARTBEAT_SECONDS": "1"})
    with node.running():
        shown = listed_helpers(portal, node.node_id)
    assert shown.startswith(f"helpers image {missing} is missing on this engine"), shown
    assert "build it (make images) or join again" in shown


def test_present_helpers_are_ok(portal: ControlPlane, tmp_path: Path,
                                node_settings: dict[str, str]):
    node = NodeProcess(portal, tmp_path / "node", {**node_settings,
                                                   "DIT4C_NODE_HEARTBEAT_SECONDS": "1"})
    with node.running():
        assert listed_helpers(portal, node.node_id) == "ok"
