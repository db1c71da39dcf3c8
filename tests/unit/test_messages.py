import json
from typing import Any

import pytest

from protocol import messages as m
from protocol.errors import MessageError


def _start(**over):
    oauth = m.OAuthClient(client_id="c", client_secret="s", authorize_url="http://p/a",
                          token_url="http://p/t", jwks_url="http://p/j")
    fields: dict[str, Any] = dict(
        instance_id="i1", image="tool:1", port=8080, cpu=1.0, memory_mb=256,
        hostname="i1.localhost", url="http://i1.localhost:8080", tunnel_token="t",
        router_urls=["ws://r"], oauth=oauth,
    )
    fields.update(over)
    return m.StartInstance(**fields)


def test_round_trip_keeps_every_field():
    msg = _start(env={"A": "b"})
    assert m.decode(msg.encode()) == msg


def test_from_dict_is_the_inverse_of_to_dict():
    msg = _start(env={"A": "b"})
    assert m.from_dict(msg.to_dict()) == msg
    with pytest.raises(MessageError, match="not a JSON object"):
        m.from_dict([msg.to_dict()])


def test_envelope_has_contract_fields():
    raw = json.loads(_start().encode())
    assert raw["type"] == "start_instance" and raw["v"] == 1
    assert raw["id"] and raw["sent_at"].endswith("Z")


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda r: r.update(type="nope"), "unknown message type"),
        (lambda r: r.update(v=2), "unsupported version"),
        (lambda r: r.pop("image"), "missing field 'image'"),
        (lambda r: r.update(port="80"), "expected int"),
        (lambda r: r.update(port=True), "expected int"),
        (lambda r: r.update(cpu="1"), "expected a number"),
        (lambda r: r.update(router_urls="ws://r"), "expected a list"),
        (lambda r: r["oauth"].pop("token_url"), "missing field 'token_url'"),
        (lambda r: r.update(instance_id="I1"), "'I1' is not an id"),
        (lambda r: r.update(instance_id="../x"), "is not an id"),
        (lambda r: r.update(instance_id=""), "is not an id"),
        (lambda r: r.update(instance_id="a" * 64), "is not an id"),
        (lambda r: r.update(instance_id=7), "expected str"),
    ],
)
def test_decode_refuses_bad_messages(mutate, needle):
    raw = json.loads(_start().encode())
    mutate(raw)
    with pytest.raises(MessageError, match=needle):
        m.decode(json.dumps(raw))


def test_decode_refuses_non_objects_and_junk():
    for text in ("[]", "not json", '"x"', "null"):
        with pytest.raises(MessageError):
            m.decode(text)


def test_unknown_extra_fields_are_ignored():
    raw = json.loads(_start().encode())
    raw["added_later"] = 1
    assert isinstance(m.decode(json.dumps(raw)), m.StartInstance)


@pytest.mark.parametrize("message", [
    m.StopInstance(instance_id="a-b"),
    m.SaveInstance(instance_id="a_b", image="r/n:t"),
    m.DiscardInstance(instance_id="A"),
    m.InstanceStateEvent(node_id="node-1", instance_id="i1", state="running"),
    m.NodeHeartbeat(node_id="n1", version="1", cpu_total=1, memory_mb_total=1, cpu_used=0,
                    memory_mb_used=0, load=0, running=["i1", "i.2"]),
    m.InstanceActivity(router_id="router-1", last_activity={"I1": "2030-01-01T00:00:00Z"}),
    m.Revocation(instance_id="i\n", hostname="i.apps.test", reason="r"),
])
def test_decode_refuses_ids_that_break_the_id_rule(message: m.Message):
    """Every instance and node id a message carries is held to protocol.ids, whoever sent it."""
    with pytest.raises(MessageError, match=r"is not an id \(\^\[a-z0-9\]\{1,63\}\$\)"):
        m.decode(message.encode())


def test_router_ids_are_names_not_ids():
    activity = m.InstanceActivity(router_id="edge-1.example", last_activity={})
    assert m.decode(activity.encode()) == activity
