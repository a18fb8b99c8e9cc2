"""BatchStore against a real Redis: a batch is written whole or not at all, its items are
ordinary jobs, and it expires with its last item."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from redis.asyncio import Redis

from common.batches import BatchItem, BatchStatus, BatchStore, batch_status
from common.jobs import UNFINISHED_TTL_S, JobStore, QueueFull, TenantQueueFull, TenantQuota
from common.keys import Keys
from common.schemas import JobSpec, JobStatus, RenderParams, Task, utcnow
from tests.support.jobs import submit_job

KEYS = Keys("batches-test:")
TASK_TTL_S = 120


@pytest.fixture
def jobs(redis: Redis) -> JobStore:
    return JobStore(redis, KEYS, task_ttl_s=TASK_TTL_S)


@pytest.fixture
def store(redis: Redis) -> BatchStore:
    return BatchStore(redis, KEYS)


def items(n: int, tenant: str, model: str = "sd") -> list[BatchItem]:
    return [
        BatchItem(
            JobSpec(
                job_id=str(uuid.uuid4()),
                model=model,
                task=Task.T2I,
                created_at=utcnow(),
                params=RenderParams(
                    prompt=f"item {i}",
                    width=64,
                    height=64,
                    num_inference_steps=2,
                    guidance_scale=1.0,
                    seed=i,
                ),
                tenant=tenant,
            )
        )
        for i in range(n)
    ]


async def test_a_batch_writes_every_item_as_a_job_in_order(
    store: BatchStore, jobs: JobStore, redis: Redis
) -> None:
    tenant, model = f"t-{uuid.uuid4().hex[:8]}", f"m-{uuid.uuid4().hex[:6]}"
    batch = items(5, tenant, model)
    batch_id = str(uuid.uuid4())
    await store.submit(batch_id, batch, tenant=tenant, api="v1", message="queued")

    record = await store.get(batch_id)
    assert record is not None and record.tenant == tenant and record.api == "v1"
    assert record.job_ids == [item.spec.job_id for item in batch]
    # Each item is an ordinary job: record, first event, stream entry, counted for its tenant.
    for item in batch:
        job = await jobs.get(item.spec.job_id)
        assert job is not None and job.status == JobStatus.PENDING and job.tenant == tenant
        assert [e.seq for e in await jobs.events_after(item.spec.job_id, 0)] == [1]
    stream = await redis.xrange(KEYS.job_stream(model))
    assert [JobSpec.model_validate_json(f["job"]).job_id for _, f in stream] == record.job_ids
    assert await redis.zcard(KEYS.tenant_jobs(tenant)) == 5

    state = await store.state(record)
    assert state is not None and state.status == BatchStatus.PENDING and state.seq == 5


async def test_a_batch_past_the_tenants_max_queued_is_refused_whole(
    store: BatchStore, jobs: JobStore, redis: Redis
) -> None:
    tenant, model = f"t-{uuid.uuid4().hex[:8]}", "sd"
    await submit_job(jobs, KEYS, tenant=tenant)
    await submit_job(jobs, KEYS, tenant=tenant)
    depth = await redis.xlen(KEYS.backlog(model))
    batch_id = str(uuid.uuid4())
    with pytest.raises(TenantQueueFull) as refused:
        await store.submit(
            batch_id,
            items(4, tenant, model),
            tenant=tenant,
            api="api",
            message="queued",
            quota=TenantQuota(max_queued=5),
        )
    assert refused.value.active == 2
    assert await redis.xlen(KEYS.backlog(model)) == depth
    assert await redis.zcard(KEYS.tenant_jobs(tenant)) == 2
    assert await store.get(batch_id) is None
    # Three fit exactly.
    await store.submit(
        batch_id,
        items(3, tenant, model),
        tenant=tenant,
        api="api",
        message="queued",
        quota=TenantQuota(max_queued=5),
    )
    assert await redis.zcard(KEYS.tenant_jobs(tenant)) == 5


async def test_a_batch_past_the_routes_max_queue_is_refused_whole(
    store: BatchStore, redis: Redis
) -> None:
    tenant, model = f"t-{uuid.uuid4().hex[:8]}", f"m-{uuid.uuid4().hex[:6]}"
    options: dict[str, Any] = {"tenant": tenant, "api": "api", "message": "queued", "max_queue": 5}
    await store.submit(str(uuid.uuid4()), items(3, tenant, model), **options)
    batch = items(3, tenant, model)
    with pytest.raises(QueueFull):
        await store.submit(str(uuid.uuid4()), batch, **options)
    assert await redis.xlen(KEYS.backlog(model)) == 3
    assert not await redis.exists(*(KEYS.job(item.spec.job_id) for item in batch))


async def test_items_stay_while_the_batch_runs_and_expire_with_its_last(
    store: BatchStore, jobs: JobStore, redis: Redis
) -> None:
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    batch = items(3, tenant)
    batch_id = str(uuid.uuid4())
    await store.submit(batch_id, batch, tenant=tenant, api="api", message="queued")
    first, second, third = (item.spec.job_id for item in batch)

    await jobs.emit(first, status=JobStatus.COMPLETED, result_urls=["http://x/1.png"])
    await jobs.emit(second, status=JobStatus.PROCESSING, progress=40)
    # A finished item of an unfinished batch lives as long as the batch, not TASK_TTL_S.
    assert await redis.ttl(KEYS.job(first)) > TASK_TTL_S
    record = await store.get(batch_id)
    assert record is not None
    state = await store.state(record)
    assert state is not None and state.status == BatchStatus.PROCESSING
    assert state.progress == (100 + 40 + 0) // 3
    assert state.counts()[JobStatus.COMPLETED] == 1

    await jobs.emit(second, status=JobStatus.FAILED, error="boom")
    await jobs.emit(third, status=JobStatus.CANCELED)
    # The last one ends the batch: it and every item now expire after TASK_TTL_S.
    for key in (KEYS.batch(batch_id), KEYS.batch_jobs(batch_id)):
        assert 0 < await redis.ttl(key) <= TASK_TTL_S
    for job_id in (first, second, third):
        assert 0 < await redis.ttl(KEYS.job(job_id)) <= TASK_TTL_S
        assert 0 < await redis.ttl(KEYS.job_events(job_id)) <= TASK_TTL_S
    state = await store.state(record)
    assert state is not None and state.status == BatchStatus.PARTIAL and state.progress == 100
    assert await redis.hget(KEYS.batch(batch_id), "unfinished") == "0"


async def test_an_unfinished_batch_expires_like_an_unfinished_job(
    store: BatchStore, redis: Redis
) -> None:
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    batch_id = str(uuid.uuid4())
    await store.submit(batch_id, items(2, tenant), tenant=tenant, api="api", message="queued")
    for key in (KEYS.batch(batch_id), KEYS.batch_jobs(batch_id)):
        assert TASK_TTL_S < await redis.ttl(key) <= UNFINISHED_TTL_S


def test_the_batch_status_follows_its_items() -> None:
    p, r, c, f, x = (
        JobStatus.PENDING,
        JobStatus.PROCESSING,
        JobStatus.COMPLETED,
        JobStatus.FAILED,
        JobStatus.CANCELED,
    )
    assert batch_status([p, p]) == BatchStatus.PENDING
    assert batch_status([p, r]) == BatchStatus.PROCESSING
    assert batch_status([c, p]) == BatchStatus.PROCESSING
    assert batch_status([c, c]) == BatchStatus.COMPLETED
    assert batch_status([f, f]) == BatchStatus.FAILED
    assert batch_status([x, x]) == BatchStatus.CANCELED
    assert batch_status([c, x]) == BatchStatus.PARTIAL
    assert BatchStatus.PARTIAL.v1 == "PARTIAL" and BatchStatus.COMPLETED.v1 == "SUCCESS"
