"""The storage helper's quota (helpers/storage/quota.py): the first count comes after the
mount serves, so the quota must be usable before it and take the count when it comes."""

from __future__ import annotations

import errno

import pytest

from helpers.storage.fuse_wire import FuseError
from helpers.storage.quota import Quota


def test_before_the_first_count_usage_is_unknown_and_writes_are_checked_against_what_was_seen(
        ) -> None:
    quota = Quota(1000)
    assert not quota.known
    quota.grow(1, 600)  # nothing counted yet: this helper's own writes are what it knows
    with pytest.raises(FuseError) as refused:
        quota.grow(2, 500)
    assert refused.value.errno == errno.EDQUOT
    assert quota.used == 600


def test_the_count_when_it_comes_adds_to_what_is_being_written() -> None:
    quota = Quota(1000)
    quota.grow(1, 300)
    quota.counted(600)  # the store held 600 bytes before this helper wrote anything
    assert quota.known and quota.used == 900
    with pytest.raises(FuseError):
        quota.grow(2, 200)
    quota.grow(2, 100)
    assert quota.used == 1000
