"""JobStore against a real Redis: one atomic change per event, strict sequence, no going back."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import OutOfMemoryError

from common.jobs import (
    UNFINISHED_TTL_S,
    ClaimExpired,
    InputsFull,
    JobStore,
    KeyClaim,
    TenantInputsFull,
    TenantQueueFull,
    TenantQuota,
)
from common.keys import Keys
from common.schemas import JobSpec, JobStatus, RenderedJob, Webhook
from tests.conftest import redis_of_its_own
from tests.support.jobs import submit_job

KEYS = Keys("jobs-test:")


@pytest.fixture
def store(redis: Redis) -> JobStore:
    return JobStore(redis, KEYS, task_ttl_s=120)


async def submit(store: JobStore, image: bytes | None = None, **options: Any) -> JobSpec:
    return await submit_job(store, KEYS, image, **options)


async def test_submit_writes_record_first_event_stream_entry_and_blob(
    store: JobStore, redis: Redis
) -> None:
    spec = await submit(store, image=b"png bytes")
    record = await store.get(spec.job_id)
    assert record is not None
    assert (record.status, record.progress, record.seq, record.message) == (
        JobStatus.PENDING,
        0,
        1,
        "queued",
    )
    assert record.params == spec.params
    # Queued: the record holds the spec, and names its waiting list until a worker's refill
    # (or this submit's own) moved it to the ready stream.
    written, queue, entry_id = await redis.hmget(KEYS.job(spec.job_id), "spec", "queue", "entry_id")
    assert JobSpec.model_validate_json(written) == spec and (queue or entry_id)
    backlog = [f["job_id"] for _, f in await redis.xrange(KEYS.backlog("sd"))]
    assert spec.job_id in backlog
    assert 0 < await redis.ttl(spec.input_blob or "") <= 60
    assert [e.seq for e in await store.events_after(spec.job_id, 0)] == [1]
    # Bounded memory: even an unfinished job's record expires, just later than a finished one's.
    assert 120 < await redis.ttl(KEYS.job(spec.job_id)) <= UNFINISHED_TTL_S


async def test_progress_never_goes_backwards_and_seq_is_strict(store: JobStore) -> None:
    spec = await submit(store)
    a = await store.emit(spec.job_id, status=JobStatus.PROCESSING, progress=40, message="m1")
    b = await store.emit(spec.job_id, progress=20)
    assert a is not None and b is not None
    assert (a.seq, a.progress, b.seq, b.progress, b.message) == (2, 40, 3, 40, "m1")
    assert [e.seq for e in await store.events_after(spec.job_id, 1)] == [2, 3]


async def test_terminal_state_is_final_and_expires(store: JobStore, redis: Redis) -> None:
    spec = await submit(store)
    done = await store.emit(
        spec.job_id, status=JobStatus.COMPLETED, progress=100, result_urls=["u1", "u2"]
    )
    assert done is not None and done.result_urls == ["u1", "u2"]
    # A late writer (say, a worker that lost its claim) changes nothing.
    assert await store.emit(spec.job_id, status=JobStatus.FAILED, error="late") is None
    record = await store.get(spec.job_id)
    assert record is not None and record.status == JobStatus.COMPLETED and record.error is None
    assert 0 < await redis.ttl(KEYS.job(spec.job_id)) <= 120
    assert 0 < await redis.ttl(KEYS.job_events(spec.job_id)) <= 120
    # No webhook asked for: nothing for the notifier.
    assert await redis.xlen(KEYS.webhook_events) == 0


async def test_the_webhook_events_stream_stays_capped_while_no_notifier_reads_it(
    redis: Redis,
) -> None:
    keys = Keys(f"capped-{uuid.uuid4().hex[:8]}:")
    store = JobStore(redis, keys, task_ttl_s=120, webhook_events_maxlen=100)
    hook = Webhook(url="https://hooks.example.com/darkroom", events=["start", "completed"])
    for _ in range(300):  # 600 events for a notifier that never comes
        spec = await submit_job(store, keys, webhook=hook)
        await store.emit(spec.job_id, status=JobStatus.PROCESSING, message="rendering")
        await store.emit(spec.job_id, status=JobStatus.COMPLETED, progress=100, result_urls=["u"])
    # Trimmed by whole stream nodes (``MAXLEN ~``): the cap plus at most a node of 100 entries.
    assert 100 <= await redis.xlen(keys.webhook_events) <= 200
    # The oldest go; the newest, the one a late notifier most needs, stays.
    ((_, newest),) = await redis.xrevrange(keys.webhook_events, count=1)
    assert (newest["job_id"], newest["type"]) == (spec.job_id, "job.completed")


async def test_unknown_job(store: JobStore) -> None:
    assert await store.get("missing") is None
    assert await store.emit("missing", progress=5) is None


async def test_a_claimed_key_is_finalised_with_the_job_or_nothing_is_written(
    store: JobStore, redis: Redis
) -> None:
    """An Idempotency-Key's record and its job are one write: a claim that no longer holds
    (expired, taken by another request) writes neither."""
    key = KEYS.idempotency("local", str(uuid.uuid4()))
    spec = await submit(store)  # something already queued on the stream
    depth = await redis.xlen(KEYS.backlog("sd"))

    await redis.set(key, "someone else's claim")
    lost = KeyClaim(key, held="my claim", final="committed", ttl_s=60)
    other = spec.model_copy(update={"job_id": str(uuid.uuid4())})
    with pytest.raises(ClaimExpired):
        await store.submit(other, message="queued", claim=lost)
    assert await store.get(other.job_id) is None
    assert await redis.xlen(KEYS.backlog("sd")) == depth
    assert await redis.get(key) == "someone else's claim"

    await redis.set(key, "my claim")
    await store.submit(other, message="queued", claim=lost, max_queue=1000)
    assert await store.get(other.job_id) is not None
    assert await redis.get(key) == "committed" and 0 < await redis.ttl(key) <= 60


async def waiting_input_bytes(redis: Redis) -> int:
    return int(await redis.get(KEYS.input_bytes) or 0)


@pytest.mark.parametrize("ending", [JobStatus.CANCELED, JobStatus.FAILED, JobStatus.COMPLETED])
async def test_a_job_that_ends_leaves_nothing_waiting(
    store: JobStore, redis: Redis, ending: JobStatus
) -> None:
    before = await waiting_input_bytes(redis)
    spec = await submit(store, image=b"x" * 1000, deadline_at=time.time() + 600)
    assert await waiting_input_bytes(redis) == before + 1000
    assert await redis.zscore(KEYS.deadlines, spec.job_id) is not None
    queued = await redis.xlen(KEYS.backlog("sd"))

    assert await store.emit(spec.job_id, status=ending) is not None

    assert not await redis.exists(KEYS.input_blob(spec.job_id))
    assert await waiting_input_bytes(redis) == before
    assert await redis.zscore(KEYS.deadlines, spec.job_id) is None
    assert await redis.xlen(KEYS.backlog("sd")) == queued - 1  # off the queue
    assert await redis.zscore(KEYS.inputs, f"{spec.job_id}:1000") is None


async def test_input_bytes_past_the_cap_queue_nothing(store: JobStore, redis: Redis) -> None:
    room = await waiting_input_bytes(redis) + 2500
    first = await submit(store, image=b"a" * 1000, max_input_bytes=room)
    await submit(store, image=b"b" * 1000, max_input_bytes=room)
    queued = await redis.xlen(KEYS.backlog("sd"))
    with pytest.raises(InputsFull):
        await submit(store, image=b"c" * 1000, max_input_bytes=room)
    assert await redis.xlen(KEYS.backlog("sd")) == queued
    await submit(store, max_input_bytes=room)  # a job without an image still goes in

    await store.emit(first.job_id, status=JobStatus.CANCELED)  # its bytes make room
    await submit(store, image=b"c" * 1000, max_input_bytes=room)


async def tenant_jobs(redis: Redis, tenant: str) -> int:
    return int(await redis.zcard(KEYS.tenant_jobs(tenant)))


async def test_a_tenant_at_max_queued_is_refused_until_one_of_its_jobs_ends(
    store: JobStore, redis: Redis
) -> None:
    tenant, other = f"t-{uuid.uuid4().hex[:8]}", f"t-{uuid.uuid4().hex[:8]}"
    quota = TenantQuota(max_queued=2)
    first = await submit(store, tenant=tenant, quota=quota)
    second = await submit(store, tenant=tenant, quota=quota)
    queued = await redis.xlen(KEYS.backlog("sd"))
    with pytest.raises(TenantQueueFull) as refused:
        await submit(store, tenant=tenant, quota=quota)
    assert refused.value.active == 2
    assert await redis.xlen(KEYS.backlog("sd")) == queued  # nothing written
    # Another tenant with the same limit is not held back by this one.
    await submit(store, tenant=other, quota=quota)

    # Whichever way a job ends, it stops counting: canceled, then completed.
    await store.emit(first.job_id, status=JobStatus.CANCELED)
    third = await submit(store, tenant=tenant, quota=quota)
    await store.emit(second.job_id, status=JobStatus.PROCESSING, progress=50)
    with pytest.raises(TenantQueueFull):  # rendering still counts
        await submit(store, tenant=tenant, quota=quota)
    await store.emit(second.job_id, status=JobStatus.COMPLETED)
    await submit(store, tenant=tenant, quota=quota)
    # A late event for a finished job changes nothing, and frees nothing twice.
    assert await store.emit(second.job_id, status=JobStatus.FAILED) is None
    assert await tenant_jobs(redis, tenant) == 2
    await store.emit(third.job_id, status=JobStatus.FAILED)
    assert await tenant_jobs(redis, tenant) == 1


async def test_a_tenants_input_bytes_have_their_own_cap_under_the_global_one(
    store: JobStore, redis: Redis
) -> None:
    tenant, other = f"t-{uuid.uuid4().hex[:8]}", f"t-{uuid.uuid4().hex[:8]}"
    quota = TenantQuota(max_input_bytes=2500)
    first = await submit(store, b"a" * 1000, tenant=tenant, quota=quota)
    await submit(store, b"b" * 1000, tenant=tenant, quota=quota)
    with pytest.raises(TenantInputsFull) as refused:
        await submit(store, b"c" * 1000, tenant=tenant, quota=quota)
    assert refused.value.waiting_bytes == 2000
    await submit(store, tenant=tenant, quota=quota)  # no image, no input bytes
    await submit(store, b"d" * 1000, tenant=other, quota=quota)
    assert int(await redis.get(KEYS.tenant_input_bytes(tenant)) or 0) == 2000

    await store.emit(first.job_id, status=JobStatus.CANCELED)
    assert int(await redis.get(KEYS.tenant_input_bytes(tenant)) or 0) == 1000
    await submit(store, b"c" * 1000, tenant=tenant, quota=quota)

    # The global cap stays the ceiling above every tenant's.
    room = await waiting_input_bytes(redis)
    with pytest.raises(InputsFull):
        await submit(store, b"e" * 10, tenant=other, quota=quota, max_input_bytes=room)


async def test_jobs_whose_records_expired_unfinished_stop_counting(
    store: JobStore, redis: Redis
) -> None:
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    quota = TenantQuota(max_queued=1)
    await submit(store, tenant=tenant, quota=quota)
    # As if it had been submitted longer ago than any unfinished record lives.
    (member,) = await redis.zrange(KEYS.tenant_jobs(tenant), 0, -1)
    await redis.zadd(KEYS.tenant_jobs(tenant), {member: time.time() - UNFINISHED_TTL_S - 1})
    await submit(store, tenant=tenant, quota=quota)
    assert await tenant_jobs(redis, tenant) == 1


async def test_a_full_redis_refuses_a_submit_with_a_quota_and_nothing_is_written(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """A script's first write decides whether a full Redis refuses it: the quota bookkeeping
    must not make that a delete (which a full Redis allows, and then lets the rest through)."""
    with redis_of_its_own(tmp_path_factory, "jobs-oom") as server:
        redis = Redis.from_url(server.url, decode_responses=True)
        try:
            store = JobStore(redis, KEYS, task_ttl_s=120)
            quota = TenantQuota(max_queued=5, max_input_bytes=1000)
            await submit(store, tenant="t", quota=quota)  # the tenant's bookkeeping exists
            await redis.config_set("maxmemory", 1)
            try:
                with pytest.raises(OutOfMemoryError):
                    await submit(store, tenant="t", quota=quota)
            finally:
                await redis.config_set("maxmemory", 0)
            assert await redis.xlen(KEYS.backlog("sd")) == 1
        finally:
            await redis.aclose()


async def test_a_job_already_rendered_goes_to_the_uploader_not_the_queue(
    store: JobStore, redis: Redis
) -> None:
    spec = await submit(store)  # an ordinary job first, to see the queue hold only it
    hit = JobSpec.model_validate(spec.model_dump() | {"job_id": str(uuid.uuid4())})
    rendered = RenderedJob(
        job_id=hit.job_id, created_at=hit.created_at, outputs=[], cached_keys=["generations/a.png"]
    )
    await store.submit(hit, message="queued", rendered=rendered, max_queue=1)

    queued = [f["job_id"] for _, f in await redis.xrange(KEYS.backlog("sd"))]
    assert spec.job_id in queued and len(queued) > 1  # full, for max_queue=1
    assert hit.job_id not in queued
    handed = await redis.xrange(KEYS.rendered)
    assert [RenderedJob.model_validate_json(f["rendered"]) for _, f in handed] == [rendered]
    await redis.delete(KEYS.rendered)
    fields = await redis.hmget(KEYS.job(hit.job_id), "entry_id", "queue", "cost", "tenant")
    assert fields == [None, None, "0", "local"]  # no queue entry to clear; it renders nothing
    assert await redis.zscore(KEYS.tenant_jobs("local"), hit.job_id) is not None
    await store.emit(hit.job_id, status=JobStatus.COMPLETED, message="done")
    assert await redis.zscore(KEYS.tenant_jobs("local"), hit.job_id) is None
