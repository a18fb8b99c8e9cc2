"""Usage accounting against a real Redis: a job is added to its tenant's day once, by the change
that ends it, with the GPU time charged to it however the charges and the end interleave."""

from __future__ import annotations

import uuid
from datetime import date, timedelta

import pytest
from redis.asyncio import Redis

from common.cost import job_cost
from common.jobs import JobStore
from common.keys import Keys
from common.schemas import JobSpec, JobStatus
from common.usage import UsageReport, UsageStore, render_token, today
from tests.support.jobs import submit_job

KEYS = Keys("usage-test:")


@pytest.fixture
def store(redis: Redis) -> JobStore:
    return JobStore(redis, KEYS, task_ttl_s=120)


@pytest.fixture
def usage(redis: Redis) -> UsageStore:
    return UsageStore(redis, KEYS)


@pytest.fixture
def tenant() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


async def submit(store: JobStore, tenant: str) -> JobSpec:
    return await submit_job(store, KEYS, tenant=tenant)


async def today_of(usage: UsageStore, tenant: str) -> UsageReport:
    return await usage.read(tenant, today(), today())


async def test_a_finished_job_is_counted_once_with_its_time_bytes_and_cost(
    store: JobStore, usage: UsageStore, tenant: str, redis: Redis
) -> None:
    spec = await submit(store, tenant)
    token = render_token()
    assert await usage.charge_gpu(spec.job_id, 1.25, token)
    # The same render charged again (a retried call whose reply was lost): nothing more.
    assert not await usage.charge_gpu(spec.job_id, 1.25, token)
    assert await usage.charge_gpu(spec.job_id, 0.5, render_token())  # a second render
    assert (await today_of(usage, tenant)).days == []  # not finished: not counted yet

    completed = await store.emit(
        spec.job_id, status=JobStatus.COMPLETED, fields={"output_bytes": 1234}
    )
    assert completed is not None
    # Whatever comes after the end changes nothing: the job is counted once.
    assert await store.emit(spec.job_id, status=JobStatus.FAILED, error="late") is None

    report = await today_of(usage, tenant)
    assert report.tenant == tenant
    (day,) = report.days
    assert day.date == today()
    assert [j.model_dump() for j in day.jobs] == [
        {"model": "sd", "task": "t2i", "completed": 1, "failed": 0, "canceled": 0}
    ]
    assert day.gpu_s == pytest.approx(1.75)
    assert day.output_bytes == 1234
    assert day.cost_megapixel_steps == pytest.approx(job_cost(spec.params, spec.task))
    assert report.total.model_dump() == {k: v for k, v in day.model_dump().items() if k != "date"}
    # Kept for the retention period, not the job's TTL.
    ttl_s = await redis.ttl(KEYS.usage(tenant, today().isoformat()))
    assert 399 * 24 * 3600 < ttl_s <= 400 * 24 * 3600


async def test_time_charged_after_the_job_ended_goes_to_the_day_it_was_counted(
    store: JobStore, usage: UsageStore, tenant: str
) -> None:
    # Canceled while rendering: the worker finds out at its next step, and charges then.
    spec = await submit(store, tenant)
    await usage.charge_gpu(spec.job_id, 0.25, render_token())
    assert await store.emit(spec.job_id, status=JobStatus.CANCELED) is not None
    token = render_token()
    assert await usage.charge_gpu(spec.job_id, 2.0, token)
    assert not await usage.charge_gpu(spec.job_id, 2.0, token)

    (day,) = (await today_of(usage, tenant)).days
    assert (day.jobs[0].canceled, day.jobs[0].completed) == (1, 0)
    assert day.gpu_s == pytest.approx(2.25)
    # A canceled job delivered nothing: no cost, no bytes.
    assert (day.cost_megapixel_steps, day.output_bytes) == (0.0, 0)


async def test_outcomes_and_tenants_are_kept_apart(
    store: JobStore, usage: UsageStore, tenant: str
) -> None:
    other = f"o-{uuid.uuid4().hex[:10]}"
    for status in (JobStatus.COMPLETED, JobStatus.COMPLETED, JobStatus.FAILED):
        spec = await submit(store, tenant)
        await store.emit(spec.job_id, status=status)
    spec = await submit(store, other)
    await store.emit(spec.job_id, status=JobStatus.CANCELED)

    (mine,) = (await today_of(usage, tenant)).total.jobs
    assert (mine.completed, mine.failed, mine.canceled) == (2, 1, 0)
    (theirs,) = (await today_of(usage, other)).total.jobs
    assert (theirs.completed, theirs.failed, theirs.canceled) == (0, 0, 1)
    assert (await today_of(usage, f"n-{uuid.uuid4().hex[:10]}")).total.jobs == []


async def test_a_range_lists_the_days_with_usage_and_sums_them(
    usage: UsageStore, tenant: str, redis: Redis
) -> None:
    first = date(2024, 2, 27)
    for offset, completed, gpu_s in [(0, 2, 1.5), (2, 1, 0.5), (5, 9, 9.0)]:
        key = KEYS.usage(tenant, (first + timedelta(days=offset)).isoformat())
        # A model name may hold ':'; the task and outcome are read from the right.
        await redis.hset(key, mapping={"jobs:org:sd:t2i:completed": completed, "gpu_s": gpu_s})
        await redis.hset(key, mapping={"jobs:org:sd:t2i:failed": 1, "output_bytes": 10})

    report = await usage.read(tenant, first, first + timedelta(days=3))
    assert [day.date for day in report.days] == [date(2024, 2, 27), date(2024, 2, 29)]
    (route,) = report.total.jobs
    assert (route.model, route.task, route.completed, route.failed) == ("org:sd", "t2i", 3, 2)
    assert (report.total.gpu_s, report.total.output_bytes) == (2.0, 20)
    assert report.model_dump(mode="json", by_alias=True)["from"] == "2024-02-27"
