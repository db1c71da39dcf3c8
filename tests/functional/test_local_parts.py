"""The local stack's parts on their own: Lambda-style triggers, the portal server, children,
the data directory and the configuration."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from chalice.app import Chalice

from infra.local.aws import AwsEndpoint
from infra.local.children import Child, stop_leftovers
from infra.local.config import LocalConfig
from infra.local.datadir import DataDir
from infra.local.errors import ConfigError, TemplateError
from infra.local.functions import RuleState, ScheduleTimer, SqsPump, load_handler
from infra.local.moto_server import MotoServer
from infra.local.portal import PortalServer
from infra.local.template import FunctionSpec
from tests.ports import free_port


@pytest.fixture(scope="module")
def endpoint() -> Iterator[AwsEndpoint]:
    server = MotoServer()
    yield server.start()
    server.stop()


def spec(handler: str = "m.f") -> FunctionSpec:
    return FunctionSpec(logical_id="Fn", handler=handler, timeout_seconds=5, memory_mb=128)


# -- SQS trigger and schedule ----------------------------------------------------------------


@pytest.fixture
def queue(endpoint):
    sqs = endpoint.client("sqs")
    url = sqs.create_queue(
        QueueName=f"t-{uuid.uuid4().hex[:10]}", Attributes={"VisibilityTimeout": "1"}
    )["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"]
    return sqs, url, arn


def pump(queue, handler, observer=None):
    sqs, url, arn = queue
    return SqsPump(spec(), handler, sqs, queue_url=url, queue_arn=arn, batch_size=10,
                   region="us-east-1", observer=observer)


def test_the_handler_gets_an_sqs_event_and_handled_messages_are_deleted(queue):
    sqs, url, arn = queue
    sqs.send_message(QueueUrl=url, MessageBody='{"type": "node_heartbeat"}',
                     MessageAttributes={"k": {"DataType": "String", "StringValue": "v"}})
    events: list[dict[str, Any]] = []
    seen: list[str] = []
    assert pump(queue, lambda event, context: events.append(event), seen.append).run_once(1) == 1
    (record,) = events[0]["Records"]
    assert record["body"] == '{"type": "node_heartbeat"}'
    assert (record["eventSource"], record["eventSourceARN"], record["awsRegion"]) == (
        "aws:sqs", arn, "us-east-1")
    assert record["messageAttributes"]["k"]["stringValue"] == "v"
    assert record["messageId"] and record["receiptHandle"]
    assert seen == ['{"type": "node_heartbeat"}']
    time.sleep(1.2)  # past the visibility timeout: a message not deleted would be back
    assert sqs.receive_message(QueueUrl=url).get("Messages", []) == []


def test_reported_failures_and_raising_handlers_leave_messages_for_redelivery(queue):
    sqs, url, _ = queue
    for body in ("keep", "done"):
        sqs.send_message(QueueUrl=url, MessageBody=body)

    def partial(event, context):
        return {"batchItemFailures": [
            {"itemIdentifier": r["messageId"]} for r in event["Records"] if r["body"] == "keep"
        ]}

    handled = 0
    while handled < 2:
        handled += pump(queue, partial).run_once(1)
    time.sleep(1.2)
    again = sqs.receive_message(QueueUrl=url, WaitTimeSeconds=1, VisibilityTimeout=1)
    assert [m["Body"] for m in again["Messages"]] == ["keep"]

    def broken(event, context):
        raise RuntimeError("handler bug")

    time.sleep(1.2)
    assert pump(queue, broken).run_once(1) == 1  # logged, not raised
    time.sleep(1.2)
    assert [m["Body"] for m in sqs.receive_message(QueueUrl=url, WaitTimeSeconds=1)[
        "Messages"]] == ["keep"]


def test_a_running_pump_delivers_and_stops_promptly(queue):
    sqs, url, _ = queue
    got = threading.Event()
    running = pump(queue, lambda event, context: got.set())
    running.start()
    sqs.send_message(QueueUrl=url, MessageBody="x")
    try:
        assert got.wait(30)
    finally:
        running.stop()


def test_stopping_the_pump_hands_over_what_is_still_queued(queue):
    sqs, url, _ = queue
    for n in range(12):
        sqs.send_message(QueueUrl=url, MessageBody=f"last-{n}")
    bodies: list[str] = []
    pump(queue, lambda event, context: bodies.extend(r["body"] for r in event["Records"])).stop()
    assert sorted(bodies) == sorted(f"last-{n}" for n in range(12))


def test_the_schedule_sends_a_scheduled_event():
    events = []
    timer = ScheduleTimer(spec(), lambda event, context: events.append((event, context)),
                          "stack-FnEveryMinute", 60, "us-east-1")
    timer.fire()
    event, context = events[0]
    assert event["detail-type"] == "Scheduled Event" and event["source"] == "aws.events"
    assert event["resources"] == ["arn:aws:events:us-east-1:123456789012:rule/stack-FnEveryMinute"]
    assert context.function_name == "Fn" and context.get_remaining_time_in_millis() > 0


def test_the_pump_and_the_schedule_follow_their_rule(endpoint, queue):
    """The control plane switches the reaper's rule off while nothing runs; locally the
    pump (the events trigger's stand-in) and the timer follow it."""
    events = endpoint.client("events")
    name = f"t-{uuid.uuid4().hex[:10]}"
    events.put_rule(Name=name, ScheduleExpression="rate(1 minute)", State="DISABLED")
    rule = RuleState(events, name)
    sqs, url, arn = queue
    delivered, fired = threading.Event(), threading.Event()
    running = SqsPump(spec(), lambda event, context: delivered.set(), sqs, queue_url=url,
                      queue_arn=arn, batch_size=10, region="us-east-1", enabled=rule)
    timer = ScheduleTimer(spec(), lambda event, context: fired.set(), name, 0.05, "us-east-1",
                          enabled=rule)
    sqs.send_message(QueueUrl=url, MessageBody="x")
    running.start()
    timer.start()
    try:
        assert not delivered.wait(2.5) and not fired.is_set()  # the rule is read once a second
        events.enable_rule(Name=name)
        assert delivered.wait(30) and fired.wait(30)
    finally:
        timer.stop()
        running.stop()


def test_a_handler_the_code_lacks_is_named():
    with pytest.raises(TemplateError, match=r"infra\.local\.config has no nothing_here"):
        load_handler(spec("infra.local.config.nothing_here"))
    with pytest.raises(TemplateError, match="cannot import no_such_module"):
        load_handler(spec("no_such_module.f"))


# -- the portal server -----------------------------------------------------------------------


def test_the_portal_serves_concurrent_requests_each_with_its_own_request():
    app = Chalice(app_name="t")
    both_inside = threading.Barrier(2, timeout=10)

    @app.route("/who/{name}")
    def who(name):
        both_inside.wait()  # only passes if two requests are in the app at once
        request = app.current_request
        assert request is not None
        return {"name": name, "path": request.context["path"]}

    ports = [free_port(), free_port()]
    server = PortalServer(app, [("127.0.0.1", ports[0]), ("127.0.0.2", ports[1])], timeout=5,
                          memory_mb=128, function_name="Api")
    server.start()
    try:
        def get(url):
            with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310
                return json.loads(response.read())

        with ThreadPoolExecutor(2) as pool:
            a = pool.submit(get, f"http://127.0.0.1:{ports[0]}/who/a")
            b = pool.submit(get, f"http://127.0.0.2:{ports[1]}/who/b")
            assert a.result() == {"name": "a", "path": "/who/a"}
            assert b.result() == {"name": "b", "path": "/who/b"}
    finally:
        server.stop()
    for host, port in (("127.0.0.1", ports[0]), ("127.0.0.2", ports[1])):
        with pytest.raises(OSError), socket.create_connection((host, port), timeout=2):
            pass


def test_a_taken_moto_port_is_named():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match=rf"127.0.0.1:{port} \(DIT4C_AWS_PORT\)"):
            MotoServer("127.0.0.1", port).start()


def test_an_address_in_use_is_named():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = PortalServer(Chalice(app_name="t"), [("127.0.0.1", port)], timeout=5,
                              memory_mb=128, function_name="Api")
        with pytest.raises(OSError, match=rf"cannot listen on 127.0.0.1:{port} \(DIT4C_PORTAL"):
            server.start()


# -- children ----------------------------------------------------------------------------------


def child(tmp_path, name, code):
    return Child(name, [sys.executable, "-c", code], dict(os.environ), log_dir=tmp_path,
                 run_dir=tmp_path)


def test_a_child_that_ignores_sigterm_is_killed_with_its_own_children(tmp_path):
    stubborn = child(tmp_path, "stubborn", (
        "import signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "print(p.pid, flush=True)\n"
        "time.sleep(60)\n"
    ))
    stubborn.start()
    deadline = time.monotonic() + 20
    while not stubborn.log_path.read_text().strip().splitlines()[1:]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    grandchild = int(stubborn.log_path.read_text().strip().splitlines()[-1])
    assert (tmp_path / "stubborn.pid").exists()

    assert stubborn.stop(grace=0.5) == -signal.SIGKILL
    assert not (tmp_path / "stubborn.pid").exists()
    deadline = time.monotonic() + 5
    while os.path.exists(f"/proc/{grandchild}") and _state(grandchild) != "Z":
        assert time.monotonic() < deadline, "the child's own child survived"
        time.sleep(0.05)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


def test_a_child_exit_is_seen_with_its_log(tmp_path):
    dying = child(tmp_path, "dying", "import sys; print('boom: bad config'); sys.exit(3)")
    dying.start()
    assert dying.wait(20) == 3
    assert "boom: bad config" in dying.tail()


def test_leftovers_of_a_killed_stack_are_stopped_but_strangers_are_not(tmp_path):
    argv = [sys.executable, "-c", "import time; time.sleep(60)"]
    leftover = subprocess.Popen(argv, process_group=0)
    stranger = subprocess.Popen(argv, process_group=0)
    try:
        (tmp_path / "router.pid").write_text(json.dumps({"pid": leftover.pid, "argv": argv}))
        (tmp_path / "node.pid").write_text(json.dumps({"pid": stranger.pid, "argv": ["other"]}))
        assert stop_leftovers(tmp_path) == ["router"]
        assert leftover.wait(10) is not None
        assert stranger.poll() is None
        assert list(tmp_path.glob("*.pid")) == []
    finally:
        for process in (leftover, stranger):
            process.kill()
            process.wait()


# -- data directory and configuration ---------------------------------------------------------


def test_a_generated_admin_password_is_kept_private_and_reused(tmp_path):
    data = DataDir(tmp_path / "d")
    data.prepare()
    first = data.admin_password(None)
    assert len(first.value) >= 16 and "generated" in first.source
    mode = stat.S_IMODE((tmp_path / "d" / "admin-password").stat().st_mode)
    assert mode == 0o600
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o700
    assert data.admin_password(None).value == first.value
    given = data.admin_password("from-the-environment")
    assert (given.value, given.source) == ("from-the-environment", "from DIT4C_ADMIN_PASSWORD")


def test_a_second_stack_on_the_same_data_dir_is_refused(tmp_path):
    first, second = DataDir(tmp_path), DataDir(tmp_path)
    first.prepare()
    first.lock()
    try:
        message = f"in use by a running local stack \\(pid {os.getpid()}"
        with pytest.raises(ConfigError, match=message):
            second.lock()
    finally:
        first.unlock()
    second.lock()
    second.unlock()


def test_configuration_defaults_and_overrides(tmp_path):
    default = LocalConfig.from_env({})
    assert (default.portal_port, default.router_port, default.aws_port) == (8000, 8080, 8001)
    assert default.data_dir.name == ".dit4c" and default.pods_network == "dit4c-pods"
    config = LocalConfig.from_env({
        "DIT4C_DATA_DIR": str(tmp_path), "DIT4C_PORTAL_PORT": "18000",
        "DIT4C_ROUTER_PORT": "18080", "DIT4C_NODE_LABELS": "a=1,b=2",
        "DIT4C_ADMIN_PASSWORD": "s3cret-enough",
    })
    assert config.portal_url == "http://localhost:18000"
    assert config.pod_tunnel_url("10.9.0.1") == "ws://10.9.0.1:18080/.dit4c/tunnel"
    assert config.docker_labels == {"a": "1", "b": "2"}
    assert config.admin_password == "s3cret-enough"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"DIT4C_PORTAL_PORT": "http"}, "DIT4C_PORTAL_PORT must be a port number"),
        ({"DIT4C_ROUTER_PORT": "70000"}, "DIT4C_ROUTER_PORT must be a port number"),
        ({"DIT4C_PORTAL_PORT": "9000", "DIT4C_ROUTER_PORT": "9000"}, "must differ"),
        ({"DIT4C_ADMIN_PASSWORD": "short"}, "at least 8 characters"),
        ({"DIT4C_STACK_NAME": "Bad_Name"}, "DIT4C_STACK_NAME"),
        ({"DIT4C_NODE_LABELS": "novalue"}, "DIT4C_NODE_LABELS"),
        ({"DIT4C_SNAPSHOT_SECONDS": "-1"}, "DIT4C_SNAPSHOT_SECONDS must be positive"),
        ({"DIT4C_JOURNAL_BYTES": "1M"}, "DIT4C_JOURNAL_BYTES must be a positive whole number"),
        ({"DIT4C_JOURNAL_SYNC": "sometimes"}, "DIT4C_JOURNAL_SYNC must be 'always' or 'never'"),
    ],
)
def test_bad_configuration_is_named(env, message):
    with pytest.raises(ConfigError, match=message):
        LocalConfig.from_env(env)


def test_without_a_docker_engine_the_stack_says_so_and_starts_nothing(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "DIT4C_"))}
    env.update({
        "DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock",
        "DIT4C_DATA_DIR": str(tmp_path / "data"),
        "DIT4C_PORTAL_PORT": str(free_port()),
        "DIT4C_ROUTER_PORT": str(free_port()),
        "DIT4C_AWS_PORT": str(free_port()),
    })
    result = subprocess.run(
        [sys.executable, "-m", "infra.local", "run"], env=env, capture_output=True, text=True,
        timeout=120, check=False, cwd=Path(__file__).resolve().parents[2],
    )
    assert result.returncode == 1
    assert "no Docker engine answers" in result.stderr
    assert "make deps" in result.stderr
    assert list((tmp_path / "data" / "run").iterdir()) == []


@pytest.mark.parametrize(
    ("env", "message"),
    [({"DIT4C_PORTAL_PORT": "eighty"}, "DIT4C_PORTAL_PORT must be a port number")],
)
def test_a_bad_setting_stops_the_command_before_anything_starts(tmp_path, env, message):
    result = subprocess.run(
        [sys.executable, "-m", "infra.local", "run"],
        env={**os.environ, "DIT4C_DATA_DIR": str(tmp_path / "data"), **env},
        capture_output=True, text=True, timeout=120, check=False,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert result.returncode == 2
    assert message in result.stderr
    assert not (tmp_path / "data").exists()


def test_an_unusable_data_directory_is_named(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    result = subprocess.run(
        [sys.executable, "-m", "infra.local", "run"],
        env={**os.environ, "DIT4C_DATA_DIR": str(blocker / "data")},
        capture_output=True, text=True, timeout=120, check=False,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert result.returncode == 2
    assert f"cannot use data directory {blocker / 'data'} (DIT4C_DATA_DIR)" in result.stderr


def test_stopping_does_not_wait_for_a_slow_scheduled_run():
    inside, release, finished = threading.Event(), threading.Event(), threading.Event()

    def slow(event, context):
        inside.set()
        release.wait(30)
        finished.set()

    timer = ScheduleTimer(spec(), slow, "rule", 0.01, "us-east-1")
    timer.start()
    try:
        assert inside.wait(30)
        timer.stop(wait=0.1)
        assert not finished.is_set(), "stop() waited for the run to finish"
    finally:
        release.set()
