"""Health: version and the state of each dependency."""

import dataclasses

from control_plane import __version__, services
from control_plane.aws import Clients
from control_plane.config import Config
from control_plane.services import Services

from .conftest import cp_boto_session


def test_health(cp_client):
    r = cp_client().get("/api/health")
    assert r.status_code == 200, r.body
    assert r.json == {"status": "ok", "version": __version__,
                      "dependencies": {"dynamodb": "ok", "sqs": "ok", "ssm": "ok"}}


def test_health_names_the_failing_dependency(cp_env, cp_client):
    config = Config.from_env(cp_env)
    broken = dataclasses.replace(config, tables=dataclasses.replace(config.tables,
                                                                    users="no-such-table"))
    services.use(Services.build(broken, Clients(broken, session=cp_boto_session())))
    r = cp_client().get("/api/health")
    assert r.status_code == 503
    assert r.json["status"] == "degraded"
    assert r.json["dependencies"]["dynamodb"].startswith("error")
    assert r.json["dependencies"]["sqs"] == "ok"
