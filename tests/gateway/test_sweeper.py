"""The sweeper against a real Redis: overdue jobs fail wherever they wait, expired inputs give
their bytes back, departed consumers leave their groups, and one replica acts at a time."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import pytest
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from common.jobs import DEADLINE_EXCEEDED, JobStore
from common.keys import NOTIFIERS_GROUP, UPLOADERS_GROUP, WORKERS_GROUP, Keys
from common.redis_server import RedisServer
from common.scheduler import Scheduler
from common.schemas import JobSpec, JobStatus
from gateway.sweeper import Sweeper
from tests.conftest import _stack
from tests.support.jobs import submit_job
from tests.support.waiting import async_wait_for

KEYS = Keys("sweeper-test:")
STREAM = KEYS.job_stream("sd")


@pytest.fixture
def jobs(redis: Redis) -> JobStore:
    return JobStore(redis, KEYS, task_ttl_s=120)


def sweeper(redis: Redis, jobs: JobStore, *, consumer_idle_s: float = 900) -> Sweeper:
    return Sweeper(
        redis, KEYS, jobs, groups=[(STREAM, WORKERS_GROUP)], consumer_idle_s=consumer_idle_s
    )


async def submit(
    jobs: JobStore, *, deadline_at: float | None = None, image: bytes | None = None, ttl_s: int = 60
) -> str:
    spec = await submit_job(jobs, KEYS, image, deadline_at=deadline_at, blob_ttl_s=ttl_s)
    return spec.job_id


async def ensure_group(redis: Redis) -> None:
    try:
        await redis.xgroup_create(STREAM, WORKERS_GROUP, id="0", mkstream=True)
    except ResponseError as exc:
        if not str(exc).startswith("BUSYGROUP"):
            raise


async def pending_ids(redis: Redis) -> set[str]:
    pending = await redis.xpending_range(STREAM, WORKERS_GROUP, min="-", max="+", count=1000)
    return {p["message_id"] for p in pending}


async def queued_ids(redis: Redis) -> set[str]:
    """The jobs any queue structure holds: the ready stream, the scheduler's waiting lists and
    its sorted sets, the route's backlog."""
    found = {
        JobSpec.model_validate_json(fields["job"]).job_id
        for _, fields in await redis.xrange(STREAM)
    }
    found |= {fields["job_id"] for _, fields in await redis.xrange(KEYS.backlog("sd"))}
    async for key in redis.scan_iter(f"{KEYS.scheduler_prefix}*"):
        kind = await redis.type(key)
        if kind == "list":
            found |= set(await redis.lrange(key, 0, -1))
        elif key.endswith(":since"):
            found |= set(await redis.zrange(key, 0, -1))
    return found


async def test_an_overdue_queued_job_fails_and_leaves_the_queue(
    redis: Redis, jobs: JobStore
) -> None:
    overdue = await submit(jobs, deadline_at=time.time() - 1)
    later = await submit(jobs, deadline_at=time.time() + 600)
    assert await sweeper(redis, jobs).end_overdue_jobs() >= 1

    record = await jobs.get(overdue)
    assert record is not None
    assert (record.status, record.error) == (JobStatus.FAILED, DEADLINE_EXCEEDED)
    assert overdue not in await queued_ids(redis)
    still = await jobs.get(later)
    assert still is not None and still.status is JobStatus.PENDING
    assert later in await queued_ids(redis)


async def test_a_job_held_by_a_worker_is_taken_from_it(redis: Redis, jobs: JobStore) -> None:
    """The worker's entry is acked under it: its hand-off finds the claim gone and writes
    nothing (see ``StreamConsumer.forward``)."""
    await ensure_group(redis)
    job_id = await submit(jobs, deadline_at=time.time() + 0.2)
    await Scheduler(redis, KEYS).refill(["sd"], 100, now=time.time())
    await redis.xreadgroup(WORKERS_GROUP, "w1", {STREAM: ">"}, count=100)
    entry = await redis.hget(KEYS.job(job_id), "entry_id")
    assert entry in await pending_ids(redis)
    await async_wait_for(
        lambda: sweeper(redis, jobs).end_overdue_jobs(), timeout_s=5, what="the deadline"
    )
    assert entry not in await pending_ids(redis)


async def test_expired_inputs_give_their_bytes_back(redis: Redis, jobs: JobStore) -> None:
    """To the global cap and to their tenant's share of it."""
    before = int(await redis.get(KEYS.input_bytes) or 0)
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    await submit_job(jobs, KEYS, b"i" * 5000, blob_ttl_s=1, tenant=tenant)
    assert int(await redis.get(KEYS.input_bytes) or 0) == before + 5000
    assert int(await redis.get(KEYS.tenant_input_bytes(tenant)) or 0) == 5000
    await asyncio.sleep(1.1)
    assert await sweeper(redis, jobs).prune_expired_inputs() >= 1
    assert int(await redis.get(KEYS.input_bytes) or 0) == before
    assert not await redis.exists(KEYS.tenant_input_bytes(tenant))


async def test_departed_consumers_leave_their_group(redis: Redis, jobs: JobStore) -> None:
    await ensure_group(redis)
    await submit(jobs)
    await redis.xreadgroup(WORKERS_GROUP, "busy", {STREAM: ">"}, count=10_000)  # holds entries
    await submit(jobs)
    ((_, [(entry, _)]),) = await redis.xreadgroup(WORKERS_GROUP, "gone", {STREAM: ">"}, count=1)
    await redis.xack(STREAM, WORKERS_GROUP, entry)  # done with its work, then the pod went away
    await asyncio.sleep(0.2)
    removed = await sweeper(redis, jobs, consumer_idle_s=0.1).remove_departed_consumers()
    assert "gone" in removed and "busy" not in removed
    names = {c["name"] for c in await redis.xinfo_consumers(STREAM, WORKERS_GROUP)}
    assert "busy" in names and "gone" not in names


async def test_the_gateway_removes_departed_members_of_every_group(
    redis: Redis,
    redis_server: RedisServer,
    models_file: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Workers, uploaders and notifiers alike: a restarted pod of any of them leaves its old
    name behind in its group, and the gateway's own sweeper removes it."""
    name = f"departed-{uuid.uuid4().hex[:6]}"
    keys = Keys(f"{name}:")
    groups = {
        (keys.job_stream("sd"), WORKERS_GROUP),
        (keys.rendered, UPLOADERS_GROUP),
        (keys.webhook_events, NOTIFIERS_GROUP),
    }
    for stream, group in groups:
        await redis.xgroup_create(stream, group, id="0", mkstream=True)
        await redis.xgroup_createconsumer(stream, group, "pod-gone")  # joins, holds nothing
    await asyncio.sleep(1.1)  # idle past DARKROOM_DEPARTED_CONSUMER_IDLE_S

    async def members() -> set[tuple[str, str]]:
        return {
            (stream, group)
            for stream, group in groups
            for consumer in await redis.xinfo_consumers(stream, group)
            if consumer["name"] == "pod-gone"
        }

    assert await members() == groups
    stack = _stack(
        name,
        ("gateway",),
        redis_server,
        models_file,
        tmp_path_factory,
        extra={"DARKROOM_DEPARTED_CONSUMER_IDLE_S": "1"},
    )
    try:

        async def all_gone() -> bool:
            return not await members()

        await async_wait_for(all_gone, timeout_s=30, what="the departed members removed")
    finally:
        stack.stop_all()


async def test_one_replica_sweeps_at_a_time(redis: Redis, jobs: JobStore) -> None:
    first, second = sweeper(redis, jobs), sweeper(redis, jobs)
    stop = asyncio.Event()
    running = asyncio.create_task(first.run(stop))
    try:
        overdue = await submit(jobs, deadline_at=time.time() + 0.3)

        async def failed() -> bool:
            record = await jobs.get(overdue)
            return record is not None and record.status is JobStatus.FAILED

        await async_wait_for(failed, timeout_s=5, what="the running sweeper to fail the job")
        assert not await second._hold_lock()
    finally:
        stop.set()
        await running
    assert await second._hold_lock()  # released on stop: the next one takes over at once
