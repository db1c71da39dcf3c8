"""Issue 14, Low (control-plane side): who may launch where, what logging out ends, where the
back channel goes, and what anyone can make the portal read.

The portal runs on moto over a real socket (:class:`ControlPlane`), its instances at
``http://<id>.localhost:<port>`` so that the back channel reaches whatever listens on that
loopback port: the real auth helper (``python -m helpers.auth`` in front of the echo tool),
or a hostile server.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from control_plane.bodies import NewImage, NewUser
from protocol import pod
from protocol.messages import InstanceStateEvent, StartInstance, decode
from tests.ports import free_port
from tests.support.auth_harness import Browser
from tests.support.auth_scenarios import ECHO_TOOL
from tests.support.control_plane import ControlPlane, control_plane
from tests.support.portal_http import Node, PortalBrowser
from tests.support.process import Process

pytestmark = pytest.mark.timeout(120)

PASSWORDS = {"admin": "admin-password-1", "alice": "alice-password-1", "bob": "bob-password-1"}


@dataclass
class World:
    plane: ControlPlane
    instance_port: int
    """Where ``<id>.localhost`` instances are reached (the router's public port)."""
    node: Node
    image_id: str
    browsers: dict[str, PortalBrowser]

    def launch(self, username: str = "alice") -> StartInstance:
        """An instance placed on the node and reported running by it."""
        answer = self.browsers[username].call("POST", "/api/instances", {
            "image_id": self.image_id, "cluster_id": self.plane.cluster_id})
        assert answer.status_code == 202, answer.text
        iid = answer.json()["id"]
        got = self.plane.sqs.receive_message(QueueUrl=self.node.queue_url,
                                             MaxNumberOfMessages=10)
        starts = [m for m in (decode(r["Body"]) for r in got.get("Messages", []))
                  if isinstance(m, StartInstance) and m.instance_id == iid]
        self.node.send(InstanceStateEvent(node_id=self.node.node_id, instance_id=iid,
                                          state="running"))
        self.plane.consume_events()
        return starts[0]


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    port = free_port()
    with control_plane(settings={"DIT4C_ROUTER_DOMAIN": "localhost",
                                 "DIT4C_ROUTER_PUBLIC_PORT": str(port)}) as plane:
        accounts = plane.services.accounts
        accounts.set_password("admin", PASSWORDS["admin"], admin=True)
        for name in ("alice", "bob"):
            accounts.create_user(NewUser(username=name, password=PASSWORDS[name]))
        image = plane.services.catalog.add(NewImage(name="Tool", image="tool:1", port=8080,
                                                    cpu=0.25, memory_mb=128))
        browsers = {name: PortalBrowser(plane.url) for name in PASSWORDS}
        for name, browser in browsers.items():
            assert browser.login(name, PASSWORDS[name]).status_code == 200
        yield World(plane, port, Node.enrol(plane, "node-1"), image.image_id, browsers)


# --- clusters ----------------------------------------------------------------------------------


def test_a_launch_into_a_cluster_the_user_may_not_use_is_refused(world: World):
    admin, alice, bob = (world.browsers[n] for n in ("admin", "alice", "bob"))
    made = admin.call("POST", "/api/clusters", {"name": "gpu", "public": False,
                                                "users": ["bob"]})
    assert made.status_code == 201 and made.json()["users"] == ["bob"], made.text
    gpu = made.json()["id"]
    launch = {"image_id": world.image_id, "cluster_id": gpu}
    refused = alice.call("POST", "/api/instances", launch)
    assert refused.status_code == 403 and "cluster" in refused.json()["error"]["message"]
    assert alice.call("GET", "/api/instances").json()["instances"] == [] or all(
        i["cluster_id"] != gpu for i in alice.call("GET", "/api/instances").json()["instances"])
    assert bob.call("POST", "/api/instances", launch).status_code == 202
    assert admin.call("POST", "/api/instances", launch).status_code == 202
    # Only admins set who may: not the users listed, not anyone else.
    for who in (alice, bob):
        assert who.call("POST", f"/api/clusters/{gpu}/access",
                        {"public": True, "users": []}).status_code == 403
    opened = admin.call("POST", f"/api/clusters/{gpu}/access", {"public": True, "users": []})
    assert opened.status_code == 200 and opened.json()["public"] is True
    assert alice.call("POST", "/api/instances", launch).status_code == 202


# --- logging out ---------------------------------------------------------------------------------


def test_logout_is_a_post(world: World):
    browser = PortalBrowser(world.plane.url)
    assert browser.login("bob", PASSWORDS["bob"]).status_code == 200
    assert browser.call("GET", "/api/logout").status_code == 405
    assert browser.call("GET", "/api/me").status_code == 200


async def test_portal_logout_ends_the_users_sessions_in_their_instances(world: World):
    start = world.launch("alice")
    tool = Process([sys.executable, "-c", ECHO_TOOL, "127.0.0.1", "0"])
    helper: Process | None = None
    browser = Browser({start.hostname: ("127.0.0.1", world.instance_port)}, "alice",
                      PASSWORDS["alice"])
    try:
        tool_port = tool.wait_for(r"listening (\d+)").group(1)
        helper = Process([sys.executable, "-m", "helpers.auth"], {
            pod.ENV_AUTH_LISTEN: f"127.0.0.1:{world.instance_port}",
            pod.ENV_AUTH_UPSTREAM: f"http://127.0.0.1:{tool_port}",
            pod.ENV_INSTANCE_ID: start.instance_id, pod.ENV_PUBLIC_URL: start.url,
            pod.ENV_OAUTH_CLIENT_ID: start.oauth.client_id,
            pod.ENV_OAUTH_CLIENT_SECRET: start.oauth.client_secret,
            pod.ENV_OAUTH_AUTHORIZE_URL: start.oauth.authorize_url,
            pod.ENV_OAUTH_TOKEN_URL: start.oauth.token_url,
            pod.ENV_OAUTH_JWKS_URL: start.oauth.jwks_url})
        helper.wait_for(r"listening on 127\.0\.0\.1:\d+")
        visit = await browser.get(start.url + "/")  # signs in through the portal
        assert visit.status == 200 and "dit4c echo tool" in visit.text, visit
        async with browser.session.get(world.plane.url + "/api/me") as answer:
            csrf = (await answer.json())["csrf_token"]
        async with browser.session.post(world.plane.url + "/api/logout", json={},
                                        headers={"X-CSRF-Token": csrf}) as answer:
            assert answer.status == 204
        # The instance's session is over, not just the portal's: back through the portal.
        async with browser.session.get(start.url + "/", allow_redirects=False) as answer:
            assert answer.status == 302, await answer.text()
            assert answer.headers["Location"].startswith(start.oauth.authorize_url)
        assert "session(s)" in helper.output() and "revocation for alice" in helper.output()
    finally:
        await browser.close()
        if helper is not None:
            helper.stop()
        tool.stop()


# --- the back channel ------------------------------------------------------------------------


class _Recorder(ThreadingHTTPServer):
    """Records each request; answers with ``status`` to ``redirect_to`` when given."""

    def __init__(self, port: int, redirect_to: str | None = None, status: int = 302) -> None:
        self.seen: list[dict[str, Any]] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self) -> None:
                recorder.seen.append({"method": self.command, "path": self.path,
                                      "headers": dict(self.headers)})
                if redirect_to is not None:
                    self.send_response(status)
                    self.send_header("Location", redirect_to)
                else:
                    self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_POST = _answer

        super().__init__(("127.0.0.1", port), Handler)
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.shutdown()
        self.server_close()


@pytest.mark.parametrize("status_code", [302, 307])
def test_the_back_channel_never_follows_a_redirect(world: World, status_code: int):
    """Whoever answers at an instance's address (a tool that took the tunnel, a compromised
    pod) must not steer the portal, and its bearer token, anywhere else."""
    start = world.launch("alice")
    collector = _Recorder(0)
    hostile = _Recorder(world.instance_port,
                        f"http://127.0.0.1:{collector.server_address[1]}/steal", status_code)
    try:
        alice = world.browsers["alice"]
        assert alice.call("POST", f"/api/instances/{start.instance_id}/share",
                          {"username": "bob"}).status_code == 200
        assert alice.call("POST", f"/api/instances/{start.instance_id}/share",
                          {"username": "bob", "revoke": True}).status_code == 200
        (sent,) = hostile.seen
        assert sent["method"] == "POST" and sent["path"] == pod.REVOKE_PATH
        assert sent["headers"]["Authorization"].startswith("Bearer ")
        assert collector.seen == []
    finally:
        hostile.close()
        collector.close()


# --- what anyone can make the portal read ------------------------------------------------------


def test_health_checks_do_not_each_read_ssm(world: World):
    ssm = world.plane.services.clients.get("ssm")
    reads: list[str] = []

    def count(**_: Any) -> None:
        reads.append("GetParameter")

    ssm.meta.events.register("before-call.ssm.GetParameter", count)
    try:
        anonymous = PortalBrowser(world.plane.url)
        for _ in range(20):
            answer = anonymous.call("GET", "/api/health")
            assert answer.status_code == 200 and answer.json()["dependencies"]["ssm"] == "ok"
    finally:
        ssm.meta.events.unregister("before-call.ssm.GetParameter", count)
    assert len(reads) <= 1
