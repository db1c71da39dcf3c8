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
