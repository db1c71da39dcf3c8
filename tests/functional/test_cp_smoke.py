def test_health(cp_client):
    r = cp_client().get("/api/health")
    assert r.status_code == 200, r.body
    assert r.json["dependencies"] == {"dynamodb": "ok", "sqs": "ok", "ssm": "ok"}
