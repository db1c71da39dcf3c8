"""Cleanup by label removes exactly one run's Docker objects, and tolerates what is gone."""

from __future__ import annotations

import uuid
from datetime import timedelta

import docker
import docker.errors
import pytest

from scripts.cleanup import remove_labelled

pytestmark = pytest.mark.docker


def test_remove_labelled_takes_one_run_and_spares_others(
    docker_client: docker.DockerClient, tool_image: str, run_labels: dict[str, str]
):
    # A run inside this run: its objects also carry this session's label as a safety net, but
    # the cleanup under test selects by the inner label.
    inner = f"dit4c.test-cleanup={uuid.uuid4().hex[:12]}"
    key, value = inner.split("=")
    labels = {**run_labels, key: value}
    network = docker_client.networks.create(f"dit4c-cleanup-{value}", labels=labels)
    container = docker_client.containers.run(
        tool_image, detach=True, labels=labels, network=network.name
    )
    spared = docker_client.networks.create(f"dit4c-spared-{value}", labels=run_labels)
    try:
        assert not remove_labelled(docker_client, inner, older_than=timedelta(hours=1)).containers

        removed = remove_labelled(docker_client, inner)

        assert removed.containers == [container.name]
        assert removed.networks == [network.name]
        with pytest.raises(docker.errors.NotFound):
            docker_client.containers.get(container.id)
        spared.reload()  # still there
        assert str(remove_labelled(docker_client, inner)) == "nothing"
    finally:
        spared.remove()

