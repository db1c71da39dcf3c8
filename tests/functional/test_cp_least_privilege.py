"""Every functional test holds the control plane's calls to template.yaml's policies (see
``tests/functional/conftest.py``): here, a permission is removed and the call that needs it is
refused, with the error AWS gives, and named in the failure of the test that made it."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from chalice.test import Client

from control_plane import services
from control_plane.app import app
from control_plane.aws import Clients
from control_plane.config import Config
from control_plane.services import Services
from infra.local.provision import Stack
from protocol.ids import new_id
from protocol.messages import NodeHeartbeat
from tests.support.iam_clients import ClientGate, fail_on, take_denials, template_policies, without

from .conftest import cp_boto_session


def _health(client: Client) -> None:
    report = json.loads(client.http.get("/api/health").body)
    assert report["dependencies"]["sqs"] == "error: ClientError", report


def _heartbeat(client: Client) -> None:
    beat = NodeHeartbeat(node_id=new_id(), version="t", cpu_total=1, memory_mb_total=1,
                         cpu_used=0, memory_mb_used=0, load=0, running=[])
    result = client.lambda_.invoke("on_event", client.events.generate_sqs_event(
        [beat.encode()])).payload
    assert len(result["batchItemFailures"]) == 1  # SQS would deliver it again


def _reap(client: Client) -> None:
    with pytest.raises(Exception, match="AccessDenied"):
        client.lambda_.invoke("reap", client.events.generate_cw_event(
            source="aws.events", detail_type="Scheduled Event", detail={}, resources=[]))


CASES: list[tuple[str, tuple[str, ...], Callable[[Client], None]]] = [
    # The issue's own example: the health check reads the events queue.
    ("ApiFunction", ("sqs:GetQueueAttributes",), _health),
    # A heartbeat reads (or writes) the node's item first.
    ("EventsFunction", ("dynamodb:GetItem", "dynamodb:UpdateItem"), _heartbeat),
    # The reaper lists the clusters through their index first.
    ("ReaperFunction", ("dynamodb:Query",), _reap),
]


@pytest.fixture
def narrowed(cp_stack: Stack, cp_env: dict[str, str]) -> Iterator[Callable[..., Client]]:
    """``narrowed(function, *actions)``: the app with that function's role lacking actions."""

    def make(function: str, *actions: str) -> Any:
        gate = ClientGate.for_stack(cp_stack, without(template_policies(), function, *actions))
        config = Config.from_env(cp_env)
        services.use(Services.build(config, Clients(config, session=cp_boto_session(),
                                                    before_call=gate)))
        return Client(app)

    yield make
    services.use(None)


@pytest.mark.parametrize(("function", "removed", "run"), CASES,
                         ids=[case[0] for case in CASES])
def test_a_call_the_template_does_not_allow_fails_the_test_naming_its_action(
        narrowed: Callable[..., Client], function: str, removed: tuple[str, ...],
        run: Callable[[Client], None]) -> None:
    with narrowed(function, *removed) as client:
        run(client)
    denied = take_denials()  # what the test run's hook would report (taken: this test passes)
    assert denied and {d.function for d in denied} == {function}
    assert {d.action for d in denied} <= set(removed)
    with pytest.raises(AssertionError) as failure:
        fail_on(denied)
    assert re.search(rf"{function} may not call ({'|'.join(removed)}) on arn:aws:",
                     str(failure.value)), failure.value


def test_the_template_allows_what_the_same_calls_need(narrowed: Callable[..., Client]
                                                      ) -> None:
    with narrowed("ApiFunction") as client:  # nothing removed
        assert client.http.get("/api/health").status_code == 200
    assert take_denials() == []
