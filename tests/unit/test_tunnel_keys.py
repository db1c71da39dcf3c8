"""The router's JWKS cache: rotation without restart, bounded refetching, fail closed."""

from __future__ import annotations

from typing import Any

import pytest

from edge_router.errors import KeysUnavailable
from edge_router.keys import FIRST_FETCH_RETRY_SECONDS, UNKNOWN_KID_REFRESH_SECONDS, KeyCache
from protocol.errors import TokenError
from protocol.tokens import SigningKey, tunnel_claims

HOST = "abc.dit4c.test"


class Control:
    """The control plane's JWKS as the cache sees it, plus a clock."""

    def __init__(self, *keys: SigningKey) -> None:
        self.keys = list(keys)
        self.fetches = 0
        self.now = 1000.0
        self.fail = False

    async def fetch(self) -> dict[str, Any]:
        self.fetches += 1
        if self.fail:
            raise OSError("control plane unreachable")
        return {"keys": [k.public_jwk() for k in self.keys]}


def token(key: SigningKey) -> str:
    return key.sign(tunnel_claims(issuer="cp", instance_id="abc", hostname=HOST))


async def test_a_rotated_key_is_fetched_on_first_sight() -> None:
    old, new = SigningKey.generate(), SigningKey.generate()
    control = Control(old)
    cache = KeyCache(control.fetch, issuer="cp", clock=lambda: control.now)
    assert (await cache.verify_tunnel(token(old), HOST))["sub"] == "abc"
    control.keys.append(new)
    control.now += UNKNOWN_KID_REFRESH_SECONDS + 1
    assert (await cache.verify_tunnel(token(new), HOST))["sub"] == "abc"
    assert control.fetches == 2


async def test_unknown_kids_cannot_make_it_refetch_in_a_loop() -> None:
    control = Control(SigningKey.generate())
    cache = KeyCache(control.fetch, clock=lambda: control.now)
    await cache.refresh()
    stranger = SigningKey.generate()
    for _ in range(20):
        with pytest.raises(TokenError, match="unknown key"):
            await cache.verify_tunnel(token(stranger), HOST)
    assert control.fetches == 1


async def test_keys_expire_and_an_unreachable_jwks_fails_closed() -> None:
    key = SigningKey.generate()
    control = Control(key)
    cache = KeyCache(control.fetch, max_age=300, clock=lambda: control.now)
    control.fail = True
    with pytest.raises(KeysUnavailable):
        await cache.verify_tunnel(token(key), HOST)
    with pytest.raises(KeysUnavailable):  # not refetched at once
        await cache.verify_tunnel(token(key), HOST)
    assert control.fetches == 1
    control.fail = False
    control.now += FIRST_FETCH_RETRY_SECONDS
    await cache.verify_tunnel(token(key), HOST)
    control.keys = [SigningKey.generate()]  # the old key is withdrawn
    control.now += 301
    with pytest.raises(TokenError, match="unknown key"):
        await cache.verify_tunnel(token(key), HOST)
