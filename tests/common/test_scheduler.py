"""The scheduler's refill on a real Redis: what a worker reads next, in which order."""

from __future__ import annotations

import time
import uuid

import pytest
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from common.jobs import JobStore
from common.keys import WORKERS_GROUP, Keys
from common.scheduler import Scheduler
from common.schemas import JobSpec, JobStatus, RenderParams, Task, utcnow
from common.tenants import Priority

AGING_S = 60.0


@pytest.fixture
def keys() -> Keys:
    return Keys(f"sched-{uuid.uuid4().hex[:8]}:")


@pytest.fixture
def store(redis: Redis, keys: Keys) -> JobStore:
    return JobStore(redis, keys, task_ttl_s=120, priority_aging_s=AGING_S)


@pytest.fixture
def scheduler(redis: Redis, keys: Keys) -> Scheduler:
    return Scheduler(redis, keys, aging_s=AGING_S)


async def submit(
    store: JobStore, *, tenant: str = "local", priority: Priority = "normal", side: int = 64
) -> str:
    spec = JobSpec(
        job_id=str(uuid.uuid4()),
        model="sd",
        task=Task.T2I,
        created_at=utcnow(),
        tenant=tenant,
        priority=priority,
        params=RenderParams(
            prompt="p", width=side, height=side, num_inference_steps=2, guidance_scale=1.0, seed=1
        ),
    )
    await store.submit(spec, message="queued")
    return spec.job_id


async def take(
    redis: Redis, keys: Keys, scheduler: Scheduler, count: int = 1, *, now: float | None = None
) -> list[str]:
    """What a worker does: refill, read, and (the job done) ack and delete; the job ids read."""
    stream = keys.job_stream("sd")
    try:
        await redis.xgroup_create(stream, WORKERS_GROUP, id="0", mkstream=True)
    except ResponseError as exc:
        if not str(exc).startswith("BUSYGROUP"):
            raise
    await scheduler.refill(["sd"], count, now=time.time() if now is None else now)
    reply = await redis.xreadgroup(WORKERS_GROUP, "w", {stream: ">"}, count=count)
    taken = []
    for _, entries in reply or []:
        for msg_id, fields in entries:
            taken.append(JobSpec.model_validate_json(fields["job"]).job_id)
            await redis.xack(stream, WORKERS_GROUP, msg_id)
            await redis.xdel(stream, msg_id)
    return taken


async def take_all(redis: Redis, keys: Keys, scheduler: Scheduler, **kw: float) -> list[str]:
    order: list[str] = []
    while batch := await take(redis, keys, scheduler, **kw):  # type: ignore[arg-type]
        order += batch
    return order


async def test_the_highest_class_goes_first_and_each_class_in_submit_order(
    redis: Redis, keys: Keys, store: JobStore, scheduler: Scheduler
) -> None:
    low = [await submit(store, priority="low") for _ in range(2)]
    normal = [await submit(store) for _ in range(2)]
    high = [await submit(store, priority="high") for _ in range(2)]
    assert await take_all(redis, keys, scheduler) == high + normal + low


async def test_a_job_read_by_nobody_yet_gives_way_to_a_higher_class(
    redis: Redis, keys: Keys, store: JobStore, scheduler: Scheduler
) -> None:
    """The ready stream's unread entries are chosen again at every refill."""
    low = [await submit(store, priority="low") for _ in range(3)]
    await scheduler.refill(["sd"], 3, now=time.time())  # three lows sit unread in the stream
    high = await submit(store, priority="high")
    assert await take(redis, keys, scheduler) == [high]
    assert await take_all(redis, keys, scheduler) == low


async def test_a_tenants_backlog_delays_anothers_job_by_about_one_job(
    redis: Redis, keys: Keys, store: JobStore, scheduler: Scheduler
) -> None:
    heavy = [await submit(store, tenant="a") for _ in range(10)]
    light = await submit(store, tenant="b")
    order = await take_all(redis, keys, scheduler)
    assert order.index(light) <= 1
    assert [job for job in order if job != light] == heavy


async def test_fair_share_is_weighted_by_job_cost(
    redis: Redis, keys: Keys, store: JobStore, scheduler: Scheduler
) -> None:
    """A tenant whose jobs cost four times as much gets about a quarter as many turns."""
    costly = [await submit(store, tenant="a", side=128) for _ in range(10)]
    cheap = [await submit(store, tenant="b", side=64) for _ in range(10)]
    first = await take(redis, keys, scheduler, 10)
    assert len([job for job in first if job in cheap]) >= 7
    assert 1 <= len([job for job in first if job in costly]) <= 3


async def test_a_job_waiting_past_the_aging_limit_counts_one_class_higher(
    redis: Redis, keys: Keys, store: JobStore, scheduler: Scheduler
) -> None:
    old_low = await submit(store, priority="low")
    normal = [await submit(store) for _ in range(3)]
    high = await submit(store, priority="high")
    # Before the limit the low job is last; after it, it goes before the younger normal jobs
    # (not before the high one: one class higher only).
    soon = await take_all(redis, keys, scheduler, now=time.time())
    assert soon == [high, *normal, old_low]

    old_low = await submit(store, priority="low")
    normal = [await submit(store) for _ in range(3)]
    high = await submit(store, priority="high")
    # The moment the low job has waited the limit (the normal ones, queued after it, not yet).
    queued_at = float(await redis.hget(keys.job(old_low), "queued_at") or 0)
    later = await take_all(redis, keys, scheduler, now=queued_at + AGING_S)
    assert later == [high, old_low, *normal]


async def test_an_ended_job_leaves_every_scheduler_structure(
    redis: Redis, keys: Keys, store: JobStore, scheduler: Scheduler
) -> None:
    jobs = [await submit(store, tenant="t", priority="low") for _ in range(3)]
    await scheduler.refill(["sd"], 1, now=time.time())  # one moves to the ready stream
    for job_id in jobs:
        assert await store.emit(job_id, status=JobStatus.CANCELED) is not None
    leftovers = [key async for key in redis.scan_iter(f"{keys.scheduler_prefix}*")]
    assert leftovers == []
    assert await redis.xlen(keys.backlog("sd")) == 0
    assert await redis.xlen(keys.job_stream("sd")) == 0
    assert await take(redis, keys, scheduler) == []
