"""The whole system, as ``make run`` starts it: who reaches an instance's tool.

``python -m infra.local run`` (portal + API with the OAuth2 server, moto, edge router, node
daemon on the real Docker engine) on free ports; users made through the API; alice launches the
busybox tool and JupyterLab, which the node runs as pods (listener, auth helper, tool); browsers
with cookie jars then go to the instance URL through the router, logging in at the real portal
page's API, and run code in a JupyterLab kernel over its WebSocket.

Skipped, naming why, while ``/oauth/authorize`` is not wired into ``control_plane/app.py``
(see docs/oauth.md, "Wiring"): an anonymous GET must be redirected to the login page.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
import requests

from tests.ports import free_port
from tests.support.auth_harness import Browser
from tests.support.jupyter_kernel import Kernel, start_kernel, stop_kernel
from tests.support.local_stack import StackProcess

pytestmark = pytest.mark.docker

PASSWORD = "a-password-for-tests"
TOOL_IMAGE = "dit4c/test-tool:busybox"
RUNNING_TIMEOUT = 180


class Api:
    """A portal user over the JSON API (session cookie + CSRF header, as the portal page)."""

    def __init__(self, base: str, username: str, password: str) -> None:
        self.base = base
        self.http = requests.Session()
        response = self.http.post(f"{base}/api/login", timeout=30,
                                  json={"username": username, "password": password})
        assert response.status_code == 200, response.text
        self.http.headers["X-CSRF-Token"] = response.json()["csrf_token"]

    def call(self, method: str, path: str, body: Any = None, expect: int = 200) -> Any:
        response = self.http.request(method, self.base + path, json=body, timeout=30)
        assert response.status_code == expect, (path, response.status_code, response.text)
        return response.json() if response.content else None

    def close(self) -> None:
        self.http.close()


@pytest.fixture(scope="module")
def system(tmp_path_factory, unique_name, run_labels, *, tool_image, helpers_image
           ) -> Iterator[dict[str, Any]]:
    data_dir = tmp_path_factory.mktemp("auth-stack") / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "DIT4C_"))}
    env.update({
        "DIT4C_DATA_DIR": str(data_dir), "DIT4C_PORTAL_PORT": str(free_port()),
        "DIT4C_ROUTER_PORT": str(free_port()), "DIT4C_AWS_PORT": str(free_port()),
        "DIT4C_STACK_NAME": "dit4c-auth-test", "DIT4C_ADMIN_PASSWORD": PASSWORD,
        "DIT4C_PUBLISH_HELPERS": "0",
        "DIT4C_NODE_PODS_NETWORK": unique_name("pods"),
        "DIT4C_NODE_LABELS": ",".join(f"{k}={v}" for k, v in run_labels.items()),
        "DIT4C_NODE_METRICS_LISTEN": "127.0.0.1:0", "DIT4C_NODE_HEARTBEAT_SECONDS": "2",
        "DIT4C_NODE_HELPERS_IMAGE": helpers_image,
    })
    stack = StackProcess(env)
    apis: list[Api] = []
    try:
        stack.wait_ready()
        portal = f"http://localhost:{env['DIT4C_PORTAL_PORT']}"
        probe = requests.get(f"http://127.0.0.1:{env['DIT4C_PORTAL_PORT']}/oauth/authorize",
                             timeout=30, allow_redirects=False)
        # The blueprint sends an anonymous visitor to log in.
        assert probe.status_code == 302, (probe.status_code, probe.text)
        base = f"http://127.0.0.1:{env['DIT4C_PORTAL_PORT']}"
        admin = Api(base, "admin", PASSWORD)
        apis.append(admin)
        for name in ("alice", "bob", "sam"):
            admin.call("POST", "/api/users", {"username": name, "password": PASSWORD}, 201)
        alice = Api(base, "alice", PASSWORD)
        apis.append(alice)
        instance, url = launch(alice, TOOL_IMAGE, env, stack)
        alice.call("POST", f"/api/instances/{instance['id']}/share", {"username": "sam"})
        hosts = {"localhost": ("127.0.0.1", int(env["DIT4C_PORTAL_PORT"])),
                 urlsplit(url).hostname or "": ("127.0.0.1", int(env["DIT4C_ROUTER_PORT"]))}
        yield {"url": url, "portal": portal, "hosts": hosts, "alice": alice,
               "id": instance["id"], "stack": stack, "env": env}
    finally:
        for api in apis:
            api.close()
        stack.kill()


def launch(api: Api, image_ref: str, env: dict[str, str], stack: StackProcess
           ) -> tuple[dict[str, Any], str]:
    """Launch ``image_ref`` from the catalog; return the instance and its URL once a browser
    sent there gets through (the auth helper's redirect to the portal)."""
    image = next(i["id"] for i in api.call("GET", "/api/images")["images"]
                 if i["image"] == image_ref)
    instance = api.call("POST", "/api/instances", {"image_id": image}, 202)
    deadline = time.monotonic() + RUNNING_TIMEOUT
    while (got := api.call("GET", f"/api/instances/{instance['id']}"))["state"] != "running":
        assert got["state"] not in ("failed", "discarded"), got
        assert time.monotonic() < deadline, f"not running in time: {got}\n{stack.output()}"
        time.sleep(1)
    url = got["url"]
    # "running" means the tool answers in the pod; the tunnel (404) and the auth helper
    # (502) may lag a moment behind.
    router = f"http://127.0.0.1:{env['DIT4C_ROUTER_PORT']}/"
    while (status := requests.get(router, headers={"Host": urlsplit(url).netloc},
                                  allow_redirects=False, timeout=30).status_code) != 302:
        assert status in (404, 502), status
        assert time.monotonic() < deadline, f"no route to {url}\n{stack.output()}"
        time.sleep(0.5)
    return instance, url


async def visit(system: dict[str, Any], username: str | None, path: str = "/") -> Any:
    browser = Browser(system["hosts"], username, PASSWORD)
    try:
        return await browser.get(system["url"] + path)
    finally:
        await browser.close()


async def test_the_owner_reaches_the_tool(system):
    page = await visit(system, "alice")
    assert page.status == 200 and "dit4c test tool" in page.text, page
    assert any(urlsplit(v).path == "/login" for v in page.visited)


async def test_a_user_it_is_shared_with_reaches_the_tool(system):
    page = await visit(system, "sam")
    assert page.status == 200 and "dit4c test tool" in page.text, page


async def test_another_user_gets_403(system):
    page = await visit(system, "bob")
    assert page.status == 403, page


async def test_anonymous_goes_to_login_and_back_to_the_deep_link(system):
    page = await visit(system, None, "/index.html?from=mail")
    assert page.status == 200 and urlsplit(page.url).path == "/login", page
    page = await visit(system, "alice", "/index.html?from=mail")
    assert page.url == system["url"] + "/index.html?from=mail" and page.status == 200, page


async def test_zz_discarding_ends_access(system):
    browser = Browser(system["hosts"], "alice", PASSWORD)
    try:
        assert (await browser.get(system["url"])).status == 200
        iid, alice = system["id"], system["alice"]
        alice.call("POST", f"/api/instances/{iid}/stop", expect=202)
        deadline = time.monotonic() + 60
        while alice.call("GET", f"/api/instances/{iid}")["state"] != "stopped":
            assert time.monotonic() < deadline
            await asyncio.sleep(0.5)
        alice.call("POST", f"/api/instances/{iid}/discard", expect=202)
        page = await browser.get(system["url"])
        assert page.status != 200 or "dit4c test tool" not in page.text, page
    finally:
        await browser.close()




@pytest.fixture(scope="module")
def jupyterlab(system, jupyterlab_image) -> dict[str, Any]:
    """A JupyterLab instance of alice's on the same stack."""
    instance, url = launch(system["alice"], jupyterlab_image, system["env"], system["stack"])
    hosts = {**system["hosts"],
             urlsplit(url).hostname or "": ("127.0.0.1", int(system["env"]["DIT4C_ROUTER_PORT"]))}
    return {"url": url, "hosts": hosts, "id": instance["id"]}


async def test_the_owner_runs_code_in_a_jupyterlab_kernel(jupyterlab):
    """A cell run as JupyterLab's page does it: sign in, start a kernel, execute code over the
    kernel WebSocket, all through the router, the tunnel and the pod's auth helper."""
    browser = Browser(jupyterlab["hosts"], "alice", PASSWORD)
    base = jupyterlab["url"]
    try:
        page = await browser.get(base + "/lab")
        assert page.status == 200 and "JupyterLab" in page.text, page
        assert any(urlsplit(v).path == "/login" for v in page.visited)
        kernel_id = await start_kernel(browser.session, base)
        async with browser.session.ws_connect(f"{base}/api/kernels/{kernel_id}/channels") as ws:
            kernel = Kernel(ws)
            done = await kernel.execute("import os\nprint(os.getuid())\n6 * 7")
            assert done.reply["status"] == "ok", done.reply
            assert done.stdout == "1000\n"
            assert done.results[0]["data"]["text/plain"] == "42"
            again = await kernel.execute("1 / 0")
            assert again.reply["status"] == "error" and again.reply["ename"] == "ZeroDivisionError"
        await stop_kernel(browser.session, base, kernel_id)
    finally:
        await browser.close()


async def test_a_kernel_websocket_without_a_session_is_refused(jupyterlab):
    anonymous = Browser(jupyterlab["hosts"], None)
    try:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await anonymous.session.ws_connect(f"{jupyterlab['url']}/api/kernels/x/channels")
        assert refused.value.status == 401
    finally:
        await anonymous.close()
