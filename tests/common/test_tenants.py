"""API key records on a real Redis: a key verifies to its tenant until revoked, and Redis holds
only its hash."""

from __future__ import annotations

import hashlib

import pytest
from redis.asyncio import Redis

from common.keys import Keys
from common.tenants import (
    KEY_PREFIX,
    LOCAL_TENANT,
    CreateKeyRequest,
    NameTaken,
    ReservedName,
    Tenant,
    TenantStore,
)

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
