"""Health: version and the state of each dependency."""

import boto3

from control_plane import __version__


def test_health(cp_client):
    r = cp_client().get("/api/health")
    assert r.status_code == 200, r.body
    assert r.json == {"status": "ok", "version": __version__,
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
