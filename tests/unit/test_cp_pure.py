"""Pure pieces of the control plane: password hashes, usernames, table values."""

from decimal import Decimal

from control_plane.identities import username_from
from control_plane.passwords import check_password, hash_password
from control_plane.table import deserialize, serialize


def test_password_hashes_are_salted_and_checked():
    first, second = hash_password("correct horse"), hash_password("correct horse")
    assert first != second and first.startswith("scrypt$")
    assert check_password("correct horse", first)
    assert not check_password("wrong horse", first)
    assert not check_password("correct horse", "garbage")
    assert not check_password("correct horse", "md5$1$2$3$4$5")


def test_external_usernames_are_sanitised_and_bounded():
    assert username_from("Alice.Smith", "uni") == "alice.smith@uni"
    assert username_from("a b/c", "gh") == "a-b-c@gh"
    assert len(username_from("x" * 200, "github")) <= 63
    assert len(username_from("x" * 200, "github", "-12")) <= 63
    assert username_from("x" * 200, "github", "-12").endswith("x-12@github")
    assert username_from("///", "uni") == "user@uni"


def test_table_values_round_trip_as_plain_python():
    item = {"a": 1, "b": 1.5, "c": "s", "d": {"e": [1, 2.25]}, "f": True, "g": None}
    raw = serialize(item)
    assert raw["b"] == {"N": "1.5"}
    back = deserialize(raw)
    assert back == item
    assert not any(isinstance(v, Decimal) for v in back.values())
