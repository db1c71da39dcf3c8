"""protocol.ids: the one id rule and the instance host mapping."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.ids import ID_MAX_LENGTH, instance_host, instance_of_host, is_id, new_id


@pytest.mark.parametrize("value", ["a", "0", "abc123", "a" * ID_MAX_LENGTH, new_id()])
def test_ids_of_the_rule(value: str) -> None:
    assert is_id(value)


@pytest.mark.parametrize("value", ["", "A", "a-b", "a_b", "a.b", "a" * (ID_MAX_LENGTH + 1),
                                   "abc\n", " abc", "é", None, 12])
def test_not_ids(value: object) -> None:
    assert not is_id(value)


def test_host_round_trip() -> None:
    assert instance_host("abc", "Apps.Example") == "abc.apps.example"
    assert instance_of_host("ABC.apps.example", "apps.example") == "abc"


@pytest.mark.parametrize("host", ["apps.example", ".apps.example", "a.b.apps.example",
                                  "\u212a.apps.example", "a-b.apps.example", "abcapps.example",
                                  "a.other.example"])
def test_not_instance_hosts(host: str) -> None:
    assert instance_of_host(host, "apps.example") is None


def test_instance_host_refuses_a_bad_id() -> None:
    with pytest.raises(ValueError, match="not an instance id"):
        instance_host("a.b", "apps.example")


@given(st.text(max_size=70))
def test_host_mapping_agrees_with_the_rule(label: str) -> None:
    folded = label.lower() if label.isascii() else label
    expected = folded if is_id(folded) else None
    assert instance_of_host(f"{label}.apps.example", "apps.example") == expected
