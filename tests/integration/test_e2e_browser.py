"""The whole system as a user meets it: a real Chromium against ``python -m infra.local run``.

The stack runs on free ports with its own data directory and pods network; the browser logs in
to the portal, launches the busybox tool from the catalog, and opens the instance through the
edge router, the pod's listener and auth helpers and the portal's OAuth2 server — then the
same for an anonymous visitor (login, back to the deep link), another user (403) and, after
discard, nobody (the route is gone).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from typing import Any

import pytest

from tests.ports import free_port
from tests.support.local_stack import StackProcess

playwright_sync = pytest.importorskip("playwright.sync_api")

pytestmark = [pytest.mark.docker, pytest.mark.timeout(420)]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
TOOL_TEXT = "busybox httpd is serving this page"
WAIT_MS = 60_000


@pytest.fixture(scope="module")
def stack(tmp_path_factory, unique_name, run_labels, docker_client, helpers_image
          ) -> Iterator[dict[str, Any]]:
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing (make deps installs Debian's chromium)")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "DIT4C_"))}
    portal, router = free_port(), free_port()
    env.update({
        "DIT4C_DATA_DIR": str(tmp_path_factory.mktemp("e2e") / "data"),
        "DIT4C_PORTAL_PORT": str(portal),
        "DIT4C_ROUTER_PORT": str(router),
        "DIT4C_AWS_PORT": str(free_port()),
        "DIT4C_STACK_NAME": "dit4c-e2e",
        "DIT4C_ADMIN_PASSWORD": "admin-e2e-password",
        "DIT4C_NODE_PODS_NETWORK": unique_name("e2e-pods"),
        "DIT4C_NODE_HELPERS_IMAGE": helpers_image,
        "DIT4C_NODE_LABELS": ",".join(f"{k}={v}" for k, v in run_labels.items()),
        "DIT4C_NODE_METRICS_LISTEN": "127.0.0.1:0",
        "DIT4C_NODE_HEARTBEAT_SECONDS": "2",
        "DIT4C_EXPORT_PORT": str(free_port()),
    })
    process = StackProcess(env)
    try:
        process.wait_ready()
        yield {"portal": f"http://localhost:{portal}", "router_port": router,
               "export_port": int(env["DIT4C_EXPORT_PORT"]),
               "password": env["DIT4C_ADMIN_PASSWORD"], "process": process}
    finally:
        process.kill()


@pytest.fixture(scope="module")
def browser(stack) -> Iterator[Any]:
    with playwright_sync.sync_playwright() as p:
        instance = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield instance
        finally:
            instance.close()


def log_in(page: Any, username: str, password: str) -> None:
    page.fill("#login-form input[name=username]", username)
    page.fill("#login-form input[name=password]", password)
    page.click("#login-form button[type=submit]")


@pytest.fixture(scope="module")
def launched(stack, browser) -> Iterator[dict[str, Any]]:
    """The admin logs in, makes a second user, launches the tool and waits for it to run."""
    context = browser.new_context()
    page = context.new_page()
    page.goto(stack["portal"] + "/")
    log_in(page, "admin", stack["password"])
    page.wait_for_selector("#view-instances:not([hidden])", timeout=WAIT_MS)

    page.goto(stack["portal"] + "/#/admin")
    page.wait_for_selector("#view-admin:not([hidden])")
    page.fill("#user-form input[name=username]", "bob")
    page.fill("#user-form input[name=password]", "bob-password-1")
    page.click("#user-form button[type=submit]")
    page.wait_for_selector("#flash.info")

    page.goto(stack["portal"] + "/#/images")
    page.click("li[data-image] button[data-action=launch] >> nth=0")
    page.wait_for_selector("#view-instances:not([hidden])")
    running = page.wait_for_selector("tr[data-instance] td.state-running", timeout=WAIT_MS * 2)
    row = running.evaluate_handle("cell => cell.closest('tr')").as_element()
    assert row is not None
    instance_id = row.get_attribute("data-instance")
    link = row.query_selector("a[href]")
    assert link is not None
    url = link.get_attribute("href")
    assert url == f"http://{instance_id}.localhost:{stack['router_port']}"
    yield {"id": instance_id, "url": url, "admin": context, "page": page}
    context.close()


def test_the_owner_opens_the_tool_from_the_portal(launched):
    page = launched["admin"].new_page()
    page.goto(launched["url"] + "/")
    page.wait_for_selector(f"text={TOOL_TEXT}", timeout=WAIT_MS)
    assert page.url.startswith(launched["url"])


def test_an_anonymous_visitor_logs_in_and_comes_back_to_the_deep_link(stack, browser, launched):
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(launched["url"] + "/index.html?from=deep-link")
        page.wait_for_selector("#view-login:not([hidden])", timeout=WAIT_MS)
        assert page.url.startswith(stack["portal"] + "/login")
        log_in(page, "admin", stack["password"])
        page.wait_for_url(re.compile(re.escape(launched["url"]) + r"/index\.html\?from=deep-link"),
                          timeout=WAIT_MS)
        page.wait_for_selector(f"text={TOOL_TEXT}")
    finally:
        context.close()


def test_another_user_gets_a_403_page(stack, browser, launched):
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(stack["portal"] + "/")
        log_in(page, "bob", "bob-password-1")
        page.wait_for_selector("#view-instances:not([hidden])", timeout=WAIT_MS)
        assert page.locator("tr[data-instance]").count() == 0  # bob sees none of admin's
        response = page.goto(launched["url"] + "/")
        assert response is not None
        page.wait_for_load_state()
        assert page.url.startswith(launched["url"]) or page.url.startswith(stack["portal"])
        assert response.status == 403 or page.locator("text=403").count() > 0
        assert page.locator(f"text={TOOL_TEXT}").count() == 0
    finally:
        context.close()


def test_storage_use_and_quotas_are_shown(stack, launched):
    page = launched["admin"].new_page()
    page.goto(stack["portal"] + "/")
    shown = page.wait_for_selector("#storage:not([hidden])", timeout=WAIT_MS)
    assert re.search(r"Storage admin: .* of 10\.0 GB used", shown.text_content() or "")
    assert "/mnt/storage" in (shown.text_content() or "")
    page.goto(stack["portal"] + "/#/admin")
    page.wait_for_selector("#view-admin:not([hidden])")
    page.fill("#storage-form input[name=username]", "bob")
    page.fill("#storage-form input[name=quota_mb]", "5")
    page.click("#storage-form button[name=set]")
    answer = page.wait_for_selector("#user-storage:not([hidden])", timeout=WAIT_MS)
    assert (answer.text_content() or "").startswith("bob: 0 B of 5.0 MB used")
    page.close()


def test_after_stop_and_discard_the_instance_is_gone(launched):
    page = launched["page"]
    row = f"tr[data-instance='{launched['id']}']"
    page.click(f"{row} button[data-action=stop]")
    page.wait_for_selector(f"{row} td.state-stopped", timeout=WAIT_MS)
    page.click(f"{row} button[data-action=discard]")
    page.wait_for_selector(f"{row} td.state-discarded", timeout=WAIT_MS)
    tool = launched["admin"].new_page()
    # A fresh query string: the browser may otherwise answer from its cache.
    response = tool.goto(launched["url"] + "/?after-discard")
    assert response is not None and response.status in (404, 502, 503)
    assert tool.locator(f"text={TOOL_TEXT}").count() == 0


def test_saving_sharing_exporting_and_deleting_in_the_portal(stack, browser, launched):
    """The owner saves an instance from its row (progress, then saved), finds the image under
    "Your saved images" with its size and source, shares it with bob by name and by a link
    that bob opens, gets an export link, and deletes it; an instance is shared from its row."""
    page = launched["page"]
    page.goto(stack["portal"] + "/#/images")
    page.click("#images li[data-image] button[data-action=launch] >> nth=0")
    page.wait_for_selector("#view-instances:not([hidden])")
    row = f"tr[data-instance]:not([data-instance='{launched['id']}'])"
    page.wait_for_selector(f"{row} td.state-running", timeout=WAIT_MS * 2)
    iid = page.get_attribute(row, "data-instance")
    row = f"tr[data-instance='{iid}']"

    page.click(f"{row} button[data-action=share]")
    page.fill(f"{row} .share-panel input[name=username]", "bob")
    page.click(f"{row} .share-panel button[data-action=share-user]")
    page.wait_for_selector(f"{row} [data-testid=shared]:has-text('Shared with bob')")

    page.click(f"{row} button[data-action=stop]")
    page.wait_for_selector(f"{row} td.state-stopped", timeout=WAIT_MS)
    page.click(f"{row} button[data-action=save]")
    page.wait_for_selector(f"{row} td.state-saved", timeout=WAIT_MS * 2)

    page.goto(stack["portal"] + "/#/images")
    card = f"#saved-images li[data-image='{iid}']"
    page.wait_for_selector(card)
    meta = page.text_content(f"{card} .meta") or ""
    assert "MB" in meta and f"from instance {iid}" in meta

    page.click(f"{card} button[data-action=share]")
    page.fill(f"{card} .share-panel input[name=username]", "bob")
    page.click(f"{card} .share-panel button[data-action=share-user]")
    page.wait_for_selector(f"{card} [data-testid=shared]:has-text('Shared with bob')")
    page.click(f"{card} .share-panel button[data-action=make-link]")
    link = page.wait_for_selector(f"{card} input[data-testid=share-link]")
    assert link is not None
    url = link.input_value()
    assert "/#/images/accept/" in url

    other = browser.new_context()
    try:
        bob = other.new_page()
        bob.goto(stack["portal"] + "/")
        log_in(bob, "bob", "bob-password-1")
        bob.wait_for_selector("#view-instances:not([hidden])", timeout=WAIT_MS)
        bob.goto(url)
        bob.wait_for_selector("#flash.info:has-text('shared with you')", timeout=WAIT_MS)
        bob.wait_for_selector(f"#shared-images li[data-image='{iid}']")
    finally:
        other.close()

    page.click(f"{card} button[data-action=export]")
    download = page.wait_for_selector(f"{card} a[data-testid=export-link]")
    assert download is not None
    href = download.get_attribute("href") or ""
    assert href.startswith(f"http://localhost:{stack['export_port']}/export/")

    page.once("dialog", lambda dialog: dialog.accept())
    page.click(f"{card} button[data-action=delete]")
    page.wait_for_selector(card, state="detached", timeout=WAIT_MS)


def test_nodes_page_join_tokens_and_node_actions(stack, browser, launched):
    """An admin makes a join token on the Nodes page, copies its one-line command (this
    portal's URL filled in), sees it listed without its secret and revokes it; the stack's own
    node is listed with its capacity, heartbeat, version and helpers, and is drained and
    activated from its row. Bob, no admin, has no Nodes page."""
    context = browser.new_context()
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=stack["portal"])
    try:
        page = context.new_page()
        page.goto(stack["portal"] + "/")
        log_in(page, "admin", stack["password"])
        page.wait_for_selector("#view-instances:not([hidden])", timeout=WAIT_MS)
        page.click("#nav-nodes")
        page.wait_for_selector("#view-nodes:not([hidden])")
        cluster = "[data-cluster=default]"
        node = page.wait_for_selector(f"{cluster} tr[data-node]", timeout=WAIT_MS)
        assert node is not None
        text = node.inner_text()
        assert "online" in text and " s ago" in text and "CPU" in text and "MB" in text
        assert re.search(r"\d+\.\d+\.\d+", text)  # the daemon's version

        page.select_option(f"{cluster} select[name=hours]", "1")
        page.click(f"{cluster} button[data-action=new-join-token]")
        box = page.wait_for_selector(f"{cluster} [data-testid=join-command]")
        assert box is not None
        command = box.input_value()
        assert re.fullmatch(rf"dit4c-node join --portal {re.escape(stack['portal'])} "
                            r"--token djt_[A-Za-z0-9_-]{43}( --helpers-digest sha256:[0-9a-f]{64})?"
                            r" && dit4c-node run", command), command
        page.click(f"{cluster} button[data-action=copy-join-command]")
        assert page.evaluate("navigator.clipboard.readText()") == command
        token = command.split("--token ")[1].split()[0]
        listed = page.wait_for_selector(f"{cluster} tr[data-join-token]")
        assert listed is not None
        assert token not in (page.text_content("#clusters") or "")
        page.wait_for_timeout(2500)  # a poll later, the command is still there
        assert page.input_value(f"{cluster} [data-testid=join-command]") == command
        page.click(f"{cluster} tr[data-join-token] button[data-action=revoke-join-token]")
        page.wait_for_selector(f"{cluster} [data-testid=no-join-tokens]", timeout=WAIT_MS)
        page.wait_for_selector(f"{cluster} [data-testid=join-command]", state="detached")

        row = f"{cluster} tr[data-node]"
        page.click(f"{row} button[data-action=drain]")
        page.wait_for_selector(f"{row} [data-testid=node-state]:has-text('draining')")
        page.click(f"{row} button[data-action=activate]")
        page.wait_for_selector(f"{row} [data-testid=node-state]:has-text('active')")
        # Last of this module's tests: the stack's only node goes for good.
        page.once("dialog", lambda dialog: dialog.accept())
        page.click(f"{row} button[data-action=decommission]")
        page.wait_for_selector(f"{row} [data-testid=node-state]:has-text('decommissioned')")
        assert page.locator(f"{row} button").count() == 0
    finally:
        context.close()
    other = browser.new_context()
    try:
        bob = other.new_page()
        bob.goto(stack["portal"] + "/")
        log_in(bob, "bob", "bob-password-1")
        bob.wait_for_selector("#view-instances:not([hidden])", timeout=WAIT_MS)
        assert bob.is_hidden("#nav-nodes")
        bob.goto(stack["portal"] + "/#/nodes")
        bob.wait_for_selector("#view-instances:not([hidden])")
    finally:
        other.close()
