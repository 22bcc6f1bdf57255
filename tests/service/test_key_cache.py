"""The API's key cache (service.auth.keys.KeyCache): a key revoked by another process stops
working within IPROX_API_KEY_CACHE_S; unknown keys are never cached; 0 turns it off."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from service.auth import keys
from service.auth.keys import KeyAccess, KeyCache, create_key, generate_key, hash_key
from service.db import session_scope
from service.models import ApiKey, KeyScope
from service.models.base import utcnow


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[Clock]:
    """The process's key cache, with a TTL of 5 s on a clock the test moves."""
    fake = Clock()
    monkeypatch.setattr(keys, "_key_cache", KeyCache(5.0, clock=fake))
    yield fake


def _revoke_elsewhere(key_id: str) -> None:
    """What ``iprox keys revoke`` in another process does: only the database row changes."""
    with session_scope() as s:
        s.execute(update(ApiKey).where(ApiKey.id == key_id).values(revoked_at=utcnow()))


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_a_key_revoked_elsewhere_stops_working_once_its_entry_expires(
    client: TestClient, clock: Clock
) -> None:
    with session_scope() as s:
        created = create_key(s, f"t-{uuid.uuid4().hex[:8]}")
    assert client.get("/jobs", headers=_bearer(created.key)).status_code == 200  # now cached
    _revoke_elsewhere(created.key_id)
    clock.now += 4.9  # inside the documented window the cached answer still stands
    assert client.get("/jobs", headers=_bearer(created.key)).status_code == 200
    clock.now += 0.2  # 5.1 s after the lookup: looked up again, and refused
    r = client.get("/jobs", headers=_bearer(created.key))
    assert r.status_code == 401 and r.json()["code"] == "unauthorized"
    assert client.get("/jobs", headers=_bearer(created.key)).status_code == 401


def test_a_refused_key_is_not_cached_so_a_new_key_works_at_once(
    client: TestClient, clock: Clock
) -> None:
    key = generate_key()
    assert client.get("/jobs", headers=_bearer(key)).status_code == 401
    with session_scope() as s:
        create_key(s, f"t-{uuid.uuid4().hex[:8]}", key=key)
    assert client.get("/jobs", headers=_bearer(key)).status_code == 200


def test_ttl_zero_looks_every_key_up(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(keys, "_key_cache", KeyCache(0.0))
    with session_scope() as s:
        created = create_key(s, f"t-{uuid.uuid4().hex[:8]}")
    assert client.get("/jobs", headers=_bearer(created.key)).status_code == 200
    _revoke_elsewhere(created.key_id)
    assert client.get("/jobs", headers=_bearer(created.key)).status_code == 401


def test_the_cache_holds_hashes_and_starts_afresh_when_full() -> None:
    clock = Clock()
    cache = KeyCache(5.0, max_entries=2, clock=clock)
    ta, tb = KeyAccess("ta", KeyScope.WRITE), KeyAccess("tb", KeyScope.READ)
    tc = KeyAccess("tc", KeyScope.READ)
    cache.put(hash_key("a"), ta)
    cache.put(hash_key("b"), tb)
    assert cache.get(hash_key("a")) == ta and cache.get("a") is None
    assert cache.get(hash_key("b")) == tb  # the scope is kept with the tenant
    cache.put(hash_key("c"), tc)  # full: the old entries go, the new one stays
    assert cache.get(hash_key("a")) is None and cache.get(hash_key("c")) == tc
    clock.now += 5.0
    assert cache.get(hash_key("c")) is None
