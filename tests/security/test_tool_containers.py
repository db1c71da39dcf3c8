"""Issue 14, Medium 6: what a tool container may do and reach.

A real pod (``PodRunner.launch``: namespace holder, listener with the auth helper, the busybox
tool) on a pods network of this run; every probe runs *inside the tool container* (``docker
exec``), as the tool's own code would. The egress policy (:mod:`node_daemon.egress`) is the
one the node daemon applies; each destination is tried before it (the attack as it was) and
after.

Destinations, all made by the test: a server on the pods bridge's gateway (the host) on an
allowed port and one on another port; a "LAN" machine, i.e. a network namespace of ours behind
a veth pair with a 10.x address that the host routes to; and 169.254.169.254, where nothing
listens on this machine (a test must not own that address), so the drop rule's packet counter
shows the attempt was stopped at the host.
"""

from __future__ import annotations

import contextlib
import http.server
import re
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import docker
import pytest

from node_daemon import egress
from node_daemon.errors import ConfigError
from node_daemon.network import ensure_pods_network, pods_bridge
from node_daemon.pods import TOOL_CAPABILITIES, TOOL_NOFILE, PodRunner, PodSettings
from protocol import pod
from tests.support.node import sample_start

pytestmark = [pytest.mark.docker, pytest.mark.timeout(180)]

# Bit numbers of the capabilities (linux/capability.h) the tool may keep, and one it may not.
CAPABILITY_BITS = {"CHOWN": 0, "DAC_OVERRIDE": 1, "FOWNER": 3, "KILL": 5, "SETGID": 6,
                   "SETUID": 7, "NET_BIND_SERVICE": 10, "NET_RAW": 13}
LAN_NET = "10.213.{n}.{host}"


class Answer(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"reached\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def http_server(host: str) -> Iterator[int]:
    server = http.server.ThreadingHTTPServer((host, 0), Answer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=30)


@contextlib.contextmanager
def lan_machine() -> Iterator[tuple[str, int]]:
    """A "machine on the node's LAN": a network namespace behind a veth pair, the host routing
    to it, serving HTTP on a 10.x address. Yields (address, port)."""
    tag = uuid.uuid4().hex[:6]
    n = int(tag[:2], 16)
    netns, outside, inside = f"dit4c-lan-{tag}", f"d4l{tag}a", f"d4l{tag}b"
    host_side, far_side = LAN_NET.format(n=n, host=1), LAN_NET.format(n=n, host=2)
    sh("ip", "netns", "add", netns)
    try:
        sh("ip", "link", "add", outside, "type", "veth", "peer", "name", inside)
        sh("ip", "link", "set", inside, "netns", netns)
        sh("ip", "addr", "add", f"{host_side}/30", "dev", outside)
        sh("ip", "link", "set", outside, "up")
        sh("ip", "netns", "exec", netns, "ip", "addr", "add", f"{far_side}/30", "dev", inside)
        sh("ip", "netns", "exec", netns, "ip", "link", "set", inside, "up")
        sh("ip", "netns", "exec", netns, "ip", "link", "set", "lo", "up")
        server = subprocess.Popen(
            ["ip", "netns", "exec", netns, "python3", "-m", "http.server", "--bind", far_side,
             "18080"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 20
            while True:  # the host reaches it (it routes to it): wait until it listens
                with contextlib.suppress(OSError), socket.create_connection((far_side, 18080),
                                                                            timeout=1):
                    break
                assert time.monotonic() < deadline, "the LAN machine never listened"
                time.sleep(0.1)
            yield far_side, 18080
        finally:
            server.terminate()
            server.wait(timeout=10)
    finally:
        subprocess.run(["ip", "link", "del", outside], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", netns], capture_output=True, check=False)


@dataclass
class Pod:
    client: docker.DockerClient
    runner: PodRunner
    instance_id: str
    tool_id: str
    bridge: str
    gateway: str

    def run(self, script: str) -> tuple[int, str]:
        api = self.client.api
        run = api.exec_create(self.tool_id, ["sh", "-c", script])
        output = api.exec_start(run["Id"]).decode(errors="replace")
        return int(api.exec_inspect(run["Id"])["ExitCode"]), output

    def reaches(self, host: str, port: int) -> bool:
        # busybox's nc (its static wget crashes resolving names on this base)
        code, output = self.run(f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {host} {port}")
        return code == 0 and " 200 OK" in output


@pytest.fixture(scope="module")
def tool_pod(docker_client: docker.DockerClient, run_labels: dict[str, str],
             unique_name: Callable[[str], str], helpers_image: str,
             tool_image: str) -> Iterator[Pod]:
    network = unique_name("pods")
    gateway = ensure_pods_network(docker_client, network, run_labels)
    runner = PodRunner(docker_client, PodSettings(node_id="sec-node", network=network,
                                                  helpers_image=helpers_image,
                                                  labels=run_labels))
    start = sample_start("sec" + uuid.uuid4().hex[:10], tool_image)
    bridge = pods_bridge(docker_client, network)
    try:
        runner.launch(start, 120, lambda percent: None)
        tool = runner.containers(start.instance_id)[pod.ROLE_TOOL]
        yield Pod(docker_client, runner, start.instance_id, tool.id, bridge, gateway)
    finally:
        egress.remove(bridge)
        runner.remove(start.instance_id)
        runner.close()


def test_the_tool_keeps_only_the_capabilities_it_needs(tool_pod: Pod) -> None:
    code, status = tool_pod.run("cat /proc/self/status; ulimit -n")
    assert code == 0, status
    fields = dict(re.findall(r"^(\w+):\s*(\S+)", status, re.MULTILINE))
    kept = sum(1 << CAPABILITY_BITS[name] for name in TOOL_CAPABILITIES)
    assert int(fields["CapBnd"], 16) == kept, fields["CapBnd"]  # NET_RAW and the rest: gone
    assert not int(fields["CapBnd"], 16) & (1 << CAPABILITY_BITS["NET_RAW"])
    assert fields["NoNewPrivs"] == "1"
    assert status.strip().splitlines()[-1] == str(TOOL_NOFILE)
    # A raw socket (ping) is refused.
    code, output = tool_pod.run("ping -c 1 -W 1 127.0.0.1")
    assert code != 0, output
    attrs = tool_pod.client.api.inspect_container(tool_pod.tool_id)["HostConfig"]
    assert attrs["PidsLimit"] and attrs["PidsLimit"] > 0


def metadata_drops(bridge: str) -> int:
    listing = subprocess.run(["iptables", "-w", "5", "-L", egress.forward_chain(bridge), "-v",
                              "-x", "-n"], capture_output=True, text=True, check=True,
                             timeout=30).stdout
    for line in listing.splitlines():
        if "DROP" in line and egress.LINK_LOCAL in line:
            return int(line.split()[0])
    raise AssertionError(f"no metadata rule in:\n{listing}")


def test_egress_from_the_tool(tool_pod: Pod) -> None:
    with http_server(tool_pod.gateway) as allowed, http_server(tool_pod.gateway) as other, \
            lan_machine() as (lan_host, lan_port):
        # Before the policy: the host's every port and the LAN are open to the tool.
        assert tool_pod.reaches(tool_pod.gateway, other)
        assert tool_pod.reaches(lan_host, lan_port)
        policy = egress.EgressPolicy(host_ports=(allowed,))
        egress.apply(policy, tool_pod.bridge)
        egress.apply(policy, tool_pod.bridge)  # idempotent: applied at every reconcile
        assert tool_pod.reaches(tool_pod.gateway, allowed)  # what the helpers need
        assert not tool_pod.reaches(tool_pod.gateway, other)
        assert not tool_pod.reaches(lan_host, lan_port)
        before = metadata_drops(tool_pod.bridge)
        assert not tool_pod.reaches("169.254.169.254", 80)
        assert metadata_drops(tool_pod.bridge) > before
        # A node may open part of its LAN to its pods.
        egress.apply(egress.EgressPolicy(host_ports=(allowed,), lan=(f"{lan_host}/32",)),
                     tool_pod.bridge)
        assert tool_pod.reaches(lan_host, lan_port)
        assert not tool_pod.reaches(tool_pod.gateway, other)


def test_bad_egress_settings_are_named() -> None:
    for mode, ports, lan, named in (("maybe", "", "", "DIT4C_NODE_EGRESS"),
                                    ("enforce", "80,http", "", "DIT4C_NODE_POD_HOST_PORTS"),
                                    ("enforce", "", "10.0.0.0/33", "DIT4C_NODE_POD_LAN")):
        with pytest.raises(ConfigError, match=named):
            egress.EgressPolicy.parse(mode, ports, lan)


def test_the_node_hands_the_listener_a_renewed_token_the_tool_cannot_read(tool_pod: Pod) -> None:
    # What node_daemon.tunnel_tokens does at half-life, into the real listener.
    tool_pod.runner.hand_tunnel_token(tool_pod.instance_id, "renewed-token")
    listener = tool_pod.runner.containers(tool_pod.instance_id)[pod.ROLE_LISTENER]
    deadline = time.monotonic() + 15
    while "tunnel token renewed" not in tool_pod.client.api.logs(listener.id).decode():
        assert time.monotonic() < deadline, "the listener never took the renewed token"
        time.sleep(0.2)
    code, output = tool_pod.run(f"cat {pod.TUNNEL_TOKEN_FILE}")  # another container's tmpfs
    assert code != 0 and "renewed-token" not in output
