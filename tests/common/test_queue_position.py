"""Counting the jobs ahead on a real Redis: the cap that bounds a read's cost, and the ETA."""

from __future__ import annotations

import time
import uuid

from redis.asyncio import Redis

from common.keys import Keys
from common.queue_position import MAX_COUNTED, QueuePosition, eta_s, jobs_ahead, position
from common.schemas import (
    JobRecord,
    JobStatus,
    RenderParams,
    RenderTiming,
    Task,
    WorkerHeartbeat,
    utcnow,
)

PARAMS = RenderParams(
    prompt="p", width=64, height=64, num_inference_steps=2, guidance_scale=1.0, seed=1
)


def record(entry_id: str | None, status: JobStatus = JobStatus.PENDING) -> JobRecord:
    return JobRecord(
        job_id=str(uuid.uuid4()), status=status, progress=0, message="", model="sd",
        task=Task.T2I, params=PARAMS, seq=1, created_at=utcnow(), entry_id=entry_id,
    )  # fmt: skip


async def test_a_job_far_back_is_counted_up_to_the_cap(redis: Redis) -> None:
    keys = Keys(f"qp-{uuid.uuid4().hex[:8]}:")
    stream = keys.job_stream("sd")
    async with redis.pipeline(transaction=False) as pipe:
        for i in range(MAX_COUNTED + 5):
            pipe.xadd(stream, {"job": str(i)})
        ids = await pipe.execute()
    try:
        assert await jobs_ahead(redis, keys, record(ids[7])) == 7
        far = await position(redis, keys, record(ids[-1]), _no_workers)
        assert far == QueuePosition(ahead=MAX_COUNTED, eta_s=None, capped=True)
        assert far.describe() == f"Queued: {MAX_COUNTED}+ ahead"
        # Not waiting: ended, never queued, or its entry gone.
        assert await jobs_ahead(redis, keys, record(ids[7], JobStatus.CANCELED)) is None
        assert await jobs_ahead(redis, keys, record(None)) is None
        await redis.xdel(stream, ids[7])
        assert await jobs_ahead(redis, keys, record(ids[7])) is None
        assert await jobs_ahead(redis, keys, record(ids[8])) == 7
    finally:
        await redis.delete(stream)


async def _no_workers() -> list[WorkerHeartbeat]:
    return []


def test_the_eta_is_the_jobs_up_to_this_one_at_the_routes_throughput() -> None:
    beat = WorkerHeartbeat(
        consumer="a", device="cpu", routes=["sd"], loaded=["sd"], ts=time.time(),
        render_times={"sd": RenderTiming(render_s=3.0, batch_size=2)},
    )  # fmt: skip
    assert eta_s(0, "sd", [beat]) == 1.5
    assert eta_s(3, "sd", [beat, beat]) == 3.0  # two workers, twice the throughput
    assert eta_s(3, "flux", [beat]) is None
    assert QueuePosition(ahead=3, eta_s=11.2).describe() == "Queued: 3 ahead, about 12 s"
