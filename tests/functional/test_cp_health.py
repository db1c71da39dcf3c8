"""Health: version and the state of each dependency."""

import boto3

from control_plane import __version__, services
from control_plane.aws import Clients
from control_plane.config import Config
from control_plane.services import Services
from tests.ports import free_port

from .conftest import cp_boto_session


def test_health(cp_client):
    r = cp_client().get("/api/health")
    assert r.status_code == 200, r.body
    assert r.json == {"status": "ok", "version": __version__, "registry": None,
                      "helpers_image": None,
                      "dependencies": {"dynamodb": "ok", "sqs": "ok", "ssm": "ok"}}


def test_health_names_the_failing_dependency(cp_env, cp_services, cp_client):
    # The users table is gone (the function may still read it: the failure is AWS's answer).
    boto3.client("dynamodb", region_name="us-east-1").delete_table(
        TableName=cp_env["DIT4C_USERS_TABLE"])
    r = cp_client().get("/api/health")
    assert r.status_code == 503
    assert r.json["status"] == "degraded"
    assert r.json["dependencies"]["dynamodb"].startswith("error")
    assert r.json["dependencies"]["sqs"] == "ok"


def test_health_names_an_image_server_that_does_not_answer(cp_env, cp_client):
    port = free_port()  # nothing listens there
    config = Config.from_env({**cp_env, "DIT4C_REGISTRY": f"127.0.0.1:{port}",
                              "DIT4C_REGISTRY_URL": f"http://127.0.0.1:{port}"})
    services.use(Services.build(config, Clients(config, session=cp_boto_session())))
    r = cp_client().get("/api/health")
    assert r.status_code == 503
    assert r.json["registry"] == f"127.0.0.1:{port}"
    assert r.json["dependencies"]["image_server"].startswith("error")
