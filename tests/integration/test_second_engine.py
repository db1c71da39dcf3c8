"""The second engine fixture (tests/support/engines.py) is a separate engine that leaves the
machine's engine alone: its own socket, data root and bridge; docker0 and the first engine's
iptables chains untouched; its containers run the loaded images and reach the host."""

from __future__ import annotations

import http.server
import ipaddress
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import docker
import pytest

from tests.support.engines import SecondEngine

pytestmark = [pytest.mark.docker]


@pytest.fixture
def b_network(second_engine: SecondEngine, unique_name: Callable[[str], str],
              run_labels: dict[str, str]) -> Iterator[str]:
    network = second_engine.client.networks.create(
        unique_name("b"), driver="bridge", labels=run_labels,
        options={"com.docker.network.bridge.enable_icc": "false"})
    yield network.name
    network.remove()


def test_it_is_another_engine(second_engine: SecondEngine, docker_client: docker.DockerClient):
    info, first = second_engine.info(), docker_client.info()
    # (Their "ID"s are equal: both come from /etc/docker/key.json.)
    assert info["DockerRootDir"] != first["DockerRootDir"]
    assert Path(info["DockerRootDir"]).is_relative_to(second_engine.root)
    bridge = second_engine.client.networks.get("bridge").attrs
    assert bridge["Options"]["com.docker.network.bridge.name"] == second_engine.bridge
    assert docker_client.ping()


def test_the_first_engine_keeps_its_bridge_and_rules(second_engine: SecondEngine):
    docker0 = subprocess.run(["ip", "-4", "addr", "show", "docker0"], capture_output=True,
                             text=True, check=False)
    assert docker0.returncode == 0 and "inet " in docker0.stdout, docker0.stderr
    chains = subprocess.run(["iptables", "-t", "nat", "-S", "DOCKER"], capture_output=True,
                            text=True, check=False).stdout
    assert "-i docker0 -j RETURN" in chains
    assert second_engine.bridge not in chains  # the second engine made no rules


def test_loaded_images_run_and_reach_the_host(second_engine: SecondEngine, b_network: str,
                                              tool_image: str, run_labels: dict[str, str]):
    gateway = second_engine.client.networks.get(b_network).attrs["IPAM"]["Config"][0]["Gateway"]
    assert second_engine.block is not None
    # Its networks come from its own pool.
    assert ipaddress.ip_address(gateway) in second_engine.block

    class Hello(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            # One write: headers and body apart, a loaded machine could let nc leave between.
            # Its last line ends: a container's output without a final newline may lose it.
            self.wfile.write(b"HTTP/1.0 200 OK\r\nContent-Length: 20\r\n\r\nhello from the host\n")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer((gateway, 0), Hello)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        out = second_engine.client.containers.run(
            # busybox nc (its static wget crashes), its stdin kept open until the answer is in:
            # at the end of its input it may leave before reading all of it
            tool_image, ["sh", "-c", "(printf 'GET / HTTP/1.0\\r\\n\\r\\n'; sleep 2) | "
                         f"nc -w 5 {gateway} {server.server_port}"],
            network=b_network, labels=run_labels, remove=True)
    finally:
        server.shutdown()
        server.server_close()
    assert out.endswith(b"hello from the host\n"), out
