"""Nothing billed while nothing runs (control_plane/standby.py): the events trigger and the
reaper's schedule are off while no node runs and no instance is in transition, and whatever
makes work turns them on again.

The events trigger is a mapping moto holds (``with_event_source_mappings``), for the function
the template gives the queue; nothing here sends to that queue (moto would run its function).
Every call is held to its function's policies, as in every functional test.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import boto3
import pytest
from chalice.test import Client

from control_plane import services
from control_plane.app import app
from control_plane.config import Config
from control_plane.records import Instance
from control_plane.services import Services
from infra.local.provision import Stack
from protocol.states import InstanceState
from protocol.tokens import SigningKey, node_claims
from tests.support.deploy import with_event_source_mappings

from .conftest import (
    ADMIN_PASSWORD,
    CP_PARAMETERS,
    CPClient,
    cp_endpoint,
    cp_gated_clients,
    cp_parameters,
    cp_provision,
)

S = InstanceState


@dataclass
class Plane:
    stack: Stack
    svc: Services
    client: Client
    admin: CPClient

    def switches(self) -> tuple[str, str]:
        """(the reaper's rule, the events trigger): as AWS holds them."""
        config = self.svc.config
        rule = boto3.client("events", region_name="us-east-1").describe_rule(
            Name=config.reaper_rule)["State"]
        assert config.events_mapping is not None
        mapping = boto3.client("lambda", region_name="us-east-1").get_event_source_mapping(
            UUID=config.events_mapping)["State"]
        return rule, mapping

    def reap(self) -> str:
        event = self.client.events.generate_cw_event(
            source="aws.events", detail_type="Scheduled Event", detail={}, resources=[])
        report: dict[str, Any] = self.client.lambda_.invoke("reap", event).payload
        return str(report["standby"])

    def enroll(self) -> tuple[str, SigningKey]:
        key = SigningKey.generate()
        token = self.svc.nodes.create_join_token("default").token
        response = CPClient(self.client).post("/api/nodes/enroll", {
            "join_token": token, "public_jwk": key.public_jwk(), "name": "n", "cpu": 2,
            "memory_mb": 2048})
        assert response.status_code == 201, response.body
        return response.json["node_id"], key

    def silence(self, node_id: str) -> None:
        self.svc.nodes.nodes.update({"node_id": node_id}, "SET last_heartbeat = :t",
                                    vals={":t": 0})

    def launch(self) -> Instance:
        image = self.admin.post("/api/images", {"name": "Tool", "image": "tool:1",
                                                "port": 8080})
        assert image.status_code == 201, image.body
        launched = self.admin.post("/api/instances", {"image_id": image.json["id"],
                                                      "cluster_id": "default"})
        assert launched.status_code == 202, launched.body
        item = self.svc.instances.get(launched.json["id"])
        assert item is not None
        return item


@pytest.fixture
def plane(cp_aws: None) -> Iterator[Plane]:
    stack = with_event_source_mappings(
        cp_endpoint(), cp_provision(f"sb{uuid.uuid4().hex[:8]}", CP_PARAMETERS),
        cp_parameters(CP_PARAMETERS))
    # On Lambda only the reaper has the mapping's id; in this process one set of services
    # serves every function.
    # A save needs an image server named (nothing is pushed here).
    config = Config.from_env({**stack.function_environments["ReaperFunction"],
                              "DIT4C_REGISTRY": "127.0.0.1:9"})
    svc = Services.build(config, cp_gated_clients(stack, config))
    services.use(svc)
    svc.accounts.set_password("admin", ADMIN_PASSWORD, admin=True)
    svc.nodes.create_cluster("lab", cluster_id="default")
    with Client(app) as client:
        admin = CPClient(client)
        assert admin.login("admin", ADMIN_PASSWORD).status_code == 200
        yield Plane(stack, svc, client, admin)
    services.use(None)


def test_an_empty_deployment_switches_off_and_a_node_switches_it_on_until_it_goes(plane):
    assert plane.switches() == ("ENABLED", "Disabled")  # as made: the template's state is on
    assert plane.reap() == "off"
    assert plane.switches() == ("DISABLED", "Disabled")
    assert plane.reap() == "off"  # a late run (EventBridge delivers at least once) changes nothing

    node_id, _ = plane.enroll()
    assert plane.switches() == ("ENABLED", "Disabled")  # the reaper runs again ...
    assert plane.reap() == "on"
    assert plane.switches() == ("ENABLED", "Enabled")  # ... and turns the trigger on

    assert plane.admin.post(f"/api/nodes/{node_id}/decommission").status_code == 200
    assert plane.reap() == "off"
    assert plane.switches() == ("DISABLED", "Disabled")


def test_a_silent_node_asking_for_credentials_is_back_and_wakes_everything(plane):
    node_id, key = plane.enroll()
    assert plane.reap() == "on"
    plane.silence(node_id)
    assert plane.reap() == "off"
    assert plane.switches() == ("DISABLED", "Disabled")

    response = CPClient(plane.client).post(
        f"/api/nodes/{node_id}/credentials",
        headers={"authorization": "Bearer " + key.sign(node_claims(node_id=node_id))})
    assert response.status_code == 200, response.body
    assert plane.svc.nodes.get(node_id).last_heartbeat > 0  # heard from now
    assert plane.switches() == ("ENABLED", "Disabled")
    assert plane.reap() == "on"  # not silent any more: its heartbeats will be read
    assert plane.switches() == ("ENABLED", "Enabled")


def test_an_instance_left_to_the_reaper_wakes_it_until_it_is_through(plane):
    # No node: the launch waits for room, and the reaper must see it through.
    assert plane.reap() == "off"
    waiting = plane.launch()
    assert waiting.state == S.PENDING
    assert plane.switches()[0] == "ENABLED"
    assert plane.reap() == "on"
    plane.svc.instances.update(waiting, replace(waiting, transition_deadline="2000-01-01"))
    assert plane.reap() == "off"  # it failed for want of room: nothing left
    failed = plane.svc.instances.get(waiting.instance_id)
    assert failed is not None and failed.state == S.FAILED


def test_saving_on_a_node_that_went_silent_wakes_the_reaper(plane):
    node_id, _ = plane.enroll()
    item = plane.launch()
    assert item.state == S.SCHEDULED
    for state in (S.STARTING, S.RUNNING, S.STOPPING, S.STOPPED):  # as the node reports
        item = plane.svc.instances.transition(item, state)
    plane.silence(node_id)
    assert plane.reap() == "off"
    saving = plane.admin.post(f"/api/instances/{item.instance_id}/save")
    assert saving.status_code == 202, saving.body
    assert plane.switches()[0] == "ENABLED"  # the reaper times the save out if nobody answers
    assert plane.reap() == "on"


def test_work_that_comes_while_switching_off_switches_it_back_on(plane):
    assert plane.svc.standby.settle(False, find_work=lambda: True) == "on"
    # Its schedule is on again; the trigger follows at the next run that finds the work.
    assert plane.switches() == ("ENABLED", "Disabled")
