"""API key records on a real Redis: a key verifies to its tenant until revoked, and Redis holds
only its hash."""

from __future__ import annotations

import base64
import hashlib

import pytest
from redis.asyncio import Redis

from common.keys import Keys
from common.tenants import (
    KEY_PREFIX,
    LOCAL_TENANT,
    NO_LIMITS,
    VERIFY_CACHE_S,
    CreateKeyRequest,
    KeyLimits,
    NameTaken,
    ReservedName,
    Tenant,
    TenantStore,
    priority_allowed,
)
from tests.support.waiting import async_wait_for

KEYS = Keys("tenants-test:")


@pytest.fixture
async def store(redis: Redis) -> TenantStore:
    for name in await redis.keys(f"{KEYS.prefix}*"):
        await redis.delete(name)
    return TenantStore(redis, KEYS)


async def test_a_key_names_its_tenant_and_redis_keeps_only_its_hash(
    store: TenantStore, redis: Redis
) -> None:
    alice = await store.create(CreateKeyRequest(name="alice"))
    root = await store.create(CreateKeyRequest(name="root", admin=True))
    assert alice.key.startswith(KEY_PREFIX) and alice.key != root.key
    assert await store.verify(alice.key) == Tenant(name="alice", admin=False)
    assert await store.verify(root.key) == Tenant(name="root", admin=True)
    assert await store.verify(alice.key + "x") is None
    assert await store.verify("") is None

    # Nothing in Redis holds the key itself, only its SHA-256.
    dump = ""
    for name in await redis.keys(f"{KEYS.prefix}*"):
        kind = await redis.type(name)
        dump += str(await redis.hgetall(name) if kind == "hash" else await redis.get(name))
    assert alice.key not in dump and root.key not in dump
    assert hashlib.sha256(alice.key.encode()).hexdigest() in dump


async def test_list_shows_names_admin_and_last_use_never_the_key(store: TenantStore) -> None:
    bob = await store.create(CreateKeyRequest(name="bob"))
    await store.create(CreateKeyRequest(name="admin-1", admin=True))
    before = {info.name: info for info in await store.list()}
    assert sorted(before) == ["admin-1", "bob"]
    assert before["admin-1"].admin and not before["bob"].admin
    assert before["bob"].last_used_at is None
    await store.verify(bob.key)
    after = {info.name: info for info in await store.list()}
    assert after["bob"].last_used_at is not None
    assert after["bob"].last_used_at >= after["bob"].created_at
    assert bob.key not in str([info.model_dump() for info in after.values()])


async def test_revoked_key_no_longer_verifies_and_its_name_can_be_reused(
    store: TenantStore,
) -> None:
    carol = await store.create(CreateKeyRequest(name="carol"))
    assert await store.revoke("carol")
    assert await store.verify(carol.key) is None
    assert not await store.revoke("carol")
    assert [info.name for info in await store.list()] == []
    again = await store.create(CreateKeyRequest(name="carol"))
    assert await store.verify(again.key) == Tenant(name="carol")
    assert await store.verify(carol.key) is None


async def test_a_key_revoked_by_another_process_stops_verifying_within_the_bound(
    store: TenantStore, redis: Redis
) -> None:
    """A process remembers a verified key for VERIFY_CACHE_S at most: a revocation made by
    another process (a CLI, another replica) that never reaches it still holds by then."""
    frank = await store.create(CreateKeyRequest(name="frank"))
    assert await store.verify(frank.key) == Tenant(name="frank")
    elsewhere = TenantStore(redis, KEYS)
    assert await elsewhere.revoke("frank")

    async def refused() -> bool:
        return await store.verify(frank.key) is None

    await async_wait_for(refused, timeout_s=VERIFY_CACHE_S + 1, what="the revocation to hold")


async def test_a_forgotten_key_is_looked_up_again_at_once(store: TenantStore, redis: Redis) -> None:
    """What the revocations channel brings (``forget``) holds on the next request."""
    gina = await store.create(CreateKeyRequest(name="gina"))
    assert await store.verify(gina.key) == Tenant(name="gina")
    assert await TenantStore(redis, KEYS).revoke("gina")
    store.forget("gina")
    assert await store.verify(gina.key) is None


async def test_a_name_has_one_key_and_local_is_reserved(store: TenantStore) -> None:
    await store.create(CreateKeyRequest(name="dave"))
    with pytest.raises(NameTaken):
        await store.create(CreateKeyRequest(name="dave", admin=True))
    with pytest.raises(ReservedName):
        await store.create(CreateKeyRequest(name=LOCAL_TENANT))
    assert [(i.name, i.admin) for i in await store.list()] == [("dave", False)]


async def test_keys_still_verify_while_redis_is_out_of_memory(
    store: TenantStore, redis: Redis
) -> None:
    """Checking a key only reads: with Redis refusing writes (maxmemory reached), status reads
    and feeds keep working for keyed clients; only the last-use note is skipped."""
    erin = await store.create(CreateKeyRequest(name="erin"))
    await redis.config_set("maxmemory", 1)
    try:
        assert await store.verify(erin.key) == Tenant(name="erin")
    finally:
        await redis.config_set("maxmemory", 0)
    (info,) = await store.list()
    assert info.last_used_at is None
    await store.verify(erin.key)
    (info,) = await store.list()
    assert info.last_used_at is not None


DEFAULTS = KeyLimits(rate_per_min=60, max_queued=20, max_priority="normal", max_cost=None)


async def test_a_key_gets_the_limits_it_names_and_the_defaults_for_the_rest(
    redis: Redis, store: TenantStore
) -> None:
    store = TenantStore(redis, KEYS, defaults=DEFAULTS)
    plain = await store.create(CreateKeyRequest(name="plain"))
    named = await store.create(
        CreateKeyRequest(name="named", rate_per_min=5, max_queued=2, max_cost=100.5)
    )
    # null: no limit, even where the default has one.
    free = await store.create(
        CreateKeyRequest.model_validate(
            {"name": "free", "rate_per_min": None, "max_queued": None, "max_priority": None}
        )
    )
    assert await store.verify(plain.key) == Tenant(name="plain", limits=DEFAULTS)
    expected = KeyLimits(rate_per_min=5, max_queued=2, max_priority="normal", max_cost=100.5)
    assert await store.verify(named.key) == Tenant(name="named", limits=expected)
    assert await store.verify(free.key) == Tenant(name="free", limits=NO_LIMITS)
    listed = {info.name: info for info in await store.list()}
    fields = set(KeyLimits.model_fields)
    assert KeyLimits.model_validate(listed["named"].model_dump(include=fields)) == expected
    assert listed["free"].rate_per_min is None and listed["free"].max_priority == "high"
    assert named.max_cost == 100.5 and plain.rate_per_min == 60


def test_max_priority_allows_its_class_and_those_below() -> None:
    normal = KeyLimits(max_priority="normal")
    assert [priority_allowed(normal, p) for p in ("high", "normal", "low")] == [False, True, True]
    assert all(priority_allowed(NO_LIMITS, p) for p in ("high", "normal", "low"))
    assert [priority_allowed(KeyLimits(max_priority="low"), p) for p in ("normal", "low")] == [
        False,
        True,
    ]


async def test_webhook_secret_is_made_once_and_a_rotated_one_stays_valid_for_the_grace(
    redis: Redis, store: TenantStore
) -> None:
    store = TenantStore(redis, KEYS, webhook_grace_s=1.0)
    await store.create(CreateKeyRequest(name="hooks"))
    assert await store.webhook_secrets("hooks") == []
    first = await store.webhook_secret("hooks")
    assert first is not None and first.previous_valid_until is None
    assert first.secret.startswith("whsec_")
    assert len(base64.b64decode(first.secret.removeprefix("whsec_"), validate=True)) == 24
    again = await store.webhook_secret("hooks")
    assert again is not None and again.secret == first.secret
    assert await store.webhook_secrets("hooks") == [first.secret]

    rotated = await store.webhook_secret("hooks", rotate=True)
    assert rotated is not None and rotated.secret != first.secret
    assert rotated.previous_valid_until is not None
    assert await store.webhook_secrets("hooks") == [rotated.secret, first.secret]
    # Readable by the services: the record holds both, as they are.
    record = await redis.hgetall(KEYS.tenant("hooks"))
    assert record["webhook_secret"] == rotated.secret
    assert record["webhook_secret_previous"] == first.secret

    async def only_the_new_one() -> bool:
        return await store.webhook_secrets("hooks") == [rotated.secret]

    await async_wait_for(only_the_new_one, timeout_s=5, what="the grace period to end")
    assert await store.webhook_secret("nobody") is None
