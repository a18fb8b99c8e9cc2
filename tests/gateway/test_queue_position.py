"""A waiting job's place and ETA through the status service's HTTP routes and SSE feed, on a real
Redis with no worker: the test reads the queue as a worker would, and publishes a worker's
heartbeat itself."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from httpx_sse import aconnect_sse
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from common.jobs import JobStore
from common.keys import WORKERS_GROUP, Keys
from common.redis_server import RedisServer
from common.scheduler import Scheduler
from common.schemas import (
    JobSpec,
    JobStatus,
    RenderParams,
    RenderTiming,
    Task,
    WorkerHeartbeat,
    utcnow,
)
from tests.conftest import _stack
from tests.support.stack import Stack
from tests.support.waiting import async_wait_for

SUBMITTED = "queued by the test"
SEED1_FIELDS = {"session_id", "status", "progress", "message", "result_url", "error"}
V1_FIELDS = {"job_id", "status", "result_urls", "seed", "error", "queue_position", "eta_s"}


@pytest.fixture(scope="module")
def stack(
    redis_server: RedisServer, models_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """The status service alone on its own prefix: only this module's jobs are in its queue."""
    stack = _stack(
        "queuepos",
        ("status",),
        redis_server,
        models_file,
        tmp_path_factory,
        extra={"DARKROOM_SSE_PING_S": "0.3"},
    )
    yield stack
    stack.stop_all()


@pytest.fixture
async def keys(redis: Redis, stack: Stack) -> AsyncIterator[Keys]:
    keys = Keys(stack.prefix)
    yield keys
    # The next test's queue starts empty, and no worker seems alive.
    waiting = [key async for key in redis.scan_iter(f"{keys.scheduler_prefix}*")]
    await redis.delete(keys.job_stream("sd"), keys.backlog("sd"), keys.workers, *waiting)


@pytest.fixture
def jobs(redis: Redis, keys: Keys) -> JobStore:
    return JobStore(redis, keys, task_ttl_s=60)


@pytest.fixture
async def client(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=20) as http:
        yield http


async def queue(jobs: JobStore, count: int) -> list[str]:
    job_ids = []
    for _ in range(count):
        job_id = str(uuid.uuid4())
        params = RenderParams(
            prompt="p", width=64, height=64, num_inference_steps=2, guidance_scale=1.0, seed=1
        )
        spec = JobSpec(job_id=job_id, model="sd", task=Task.T2I, params=params, created_at=utcnow())
        await jobs.submit(spec, message=SUBMITTED)
        job_ids.append(job_id)
    return job_ids


async def v1(client: httpx.AsyncClient, job_id: str) -> dict[str, object]:
    body: dict[str, object] = (await client.get(f"/v1/jobs/{job_id}")).raise_for_status().json()
    assert set(body) == V1_FIELDS
    return body


async def seed1(client: httpx.AsyncClient, job_id: str) -> dict[str, object]:
    response = await client.get(f"/api/{job_id}/status")
    body: dict[str, object] = response.raise_for_status().json()
    assert set(body) == SEED1_FIELDS  # seed 1's fields, exactly: the place is in the message
    return body


async def places(client: httpx.AsyncClient, job_ids: list[str]) -> list[object]:
    return [(await v1(client, job_id))["queue_position"] for job_id in job_ids]


async def read_like_a_worker(redis: Redis, keys: Keys, count: int) -> None:
    stream = keys.job_stream("sd")
    try:
        await redis.xgroup_create(stream, WORKERS_GROUP, id="0", mkstream=True)
    except ResponseError as exc:
        if not str(exc).startswith("BUSYGROUP"):
            raise
    await Scheduler(redis, keys).refill(["sd"], count, now=time.time())
    await redis.xreadgroup(WORKERS_GROUP, "test-worker", {stream: ">"}, count=count)


async def test_waiting_jobs_are_numbered_in_submit_order_and_move_up_as_others_cancel(
    client: httpx.AsyncClient, jobs: JobStore
) -> None:
    job_ids = await queue(jobs, 4)
    assert await places(client, job_ids) == [0, 1, 2, 3]
    for place, job_id in enumerate(job_ids):
        body = await v1(client, job_id)
        assert (body["status"], body["eta_s"]) == ("PENDING", None)  # no worker: no estimate
        status = await seed1(client, job_id)
        assert (status["status"], status["message"]) == ("pending", f"Queued: {place} ahead")

    await jobs.emit(job_ids[0], status=JobStatus.CANCELED, message="Canceled")
    await jobs.emit(job_ids[2], status=JobStatus.CANCELED, message="Canceled")
    assert await places(client, job_ids) == [None, 0, None, 1]
    assert (await seed1(client, job_ids[0]))["message"] == "Canceled"
    assert (await seed1(client, job_ids[3]))["message"] == "Queued: 1 ahead"


async def test_a_job_a_worker_has_taken_has_no_place(
    client: httpx.AsyncClient, jobs: JobStore, redis: Redis, keys: Keys
) -> None:
    job_ids = await queue(jobs, 3)
    await read_like_a_worker(redis, keys, count=1)
    assert await places(client, job_ids) == [None, 0, 1]
    status = await seed1(client, job_ids[0])
    assert (status["status"], status["message"]) == ("pending", SUBMITTED)  # read, not started

    await jobs.emit(job_ids[0], status=JobStatus.PROCESSING, progress=10, message="Generating")
    assert (await seed1(client, job_ids[0]))["message"] == "Generating"
    assert (await v1(client, job_ids[0]))["eta_s"] is None


async def test_the_eta_comes_from_the_live_workers_render_times(
    client: httpx.AsyncClient, jobs: JobStore, redis: Redis, keys: Keys
) -> None:
    job_ids = await queue(jobs, 3)
    assert (await v1(client, job_ids[2]))["eta_s"] is None

    def beat(name: str, route: str, render_s: float, batch_size: float, age_s: float = 0) -> str:
        return WorkerHeartbeat(
            consumer=name,
            device="cpu",
            routes=[route],
            loaded=[route],
            render_times={route: RenderTiming(render_s=render_s, batch_size=batch_size)},
            ts=time.time() - age_s,
        ).model_dump_json()

    # Two live workers do one job a second between them (1 per 2 s, and 2 per 4 s); the one
    # on another route and the one long silent count for nothing.
    await redis.hset(
        keys.workers,
        mapping={
            "a": beat("a", "sd", render_s=2.0, batch_size=1),
            "b": beat("b", "sd", render_s=4.0, batch_size=2),
            "c": beat("c", "flux", render_s=0.1, batch_size=1),
            "d": beat("d", "sd", render_s=0.1, batch_size=1, age_s=600),
        },
    )
    assert [(await v1(client, job_id))["eta_s"] for job_id in job_ids] == [1.0, 2.0, 3.0]
    assert (await seed1(client, job_ids[2]))["message"] == "Queued: 2 ahead, about 3 s"

    await read_like_a_worker(redis, keys, count=3)  # all taken: no place, no estimate
    assert [(await v1(client, job_id))["eta_s"] for job_id in job_ids] == [None] * 3


async def test_an_open_feed_gets_unlogged_queue_frames_until_the_job_starts(
    client: httpx.AsyncClient, jobs: JobStore, redis: Redis, keys: Keys
) -> None:
    first, second = await queue(jobs, 2)
    path = f"/v1/jobs/{second}/events"
    frames: list[list[str]] = []  # every frame's lines, as sent
    plain: list[dict[str, object]] = []  # what an EventSource's onmessage sees

    async def raw() -> None:
        async with client.stream("GET", path) as response:
            lines: list[str] = []
            async for line in response.aiter_lines():
                if line:
                    lines.append(line)
                elif lines:
                    frames.append(lines)
                    lines = []

    async def onmessage() -> None:
        async with aconnect_sse(client, "GET", path) as source:
            async for sse in source.aiter_sse():
                if sse.event == "message" and sse.data:
                    plain.append({"id": int(sse.id), **json.loads(sse.data)})

    def queue_frames() -> list[list[str]]:
        return [f for f in frames if f[0] == "event: queue"]

    async def place_sent(place: int) -> bool:
        return any(json.loads(f[1].removeprefix("data: "))["queue_position"] == place
                   for f in queue_frames())  # fmt: skip

    feeds = [asyncio.create_task(raw()), asyncio.create_task(onmessage())]
    await async_wait_for(lambda: place_sent(1), timeout_s=10, what="a queue frame, place 1")
    await jobs.emit(first, status=JobStatus.CANCELED, message="Canceled")
    await async_wait_for(lambda: place_sent(0), timeout_s=10, what="a queue frame, place 0")

    await jobs.emit(second, status=JobStatus.PROCESSING, progress=10, message="Generating")
    await async_wait_for(
        lambda: _true(any(f[0] == "id: 2" for f in frames)), timeout_s=10, what="the start event"
    )
    started_at = next(i for i, f in enumerate(frames) if f[0] == "id: 2")
    # An estimate appears now: a feed still looking would send a frame with it within a second.
    beat = WorkerHeartbeat(
        consumer="w",
        device="cpu",
        routes=["sd"],
        loaded=["sd"],
        render_times={"sd": RenderTiming(render_s=1.0, batch_size=1)},
        ts=time.time(),
    )
    await redis.hset(keys.workers, "w", beat.model_dump_json())
    await async_wait_for(
        lambda: _true(sum(f == [": ping"] for f in frames[started_at:]) >= 6),
        timeout_s=10,
        what="two seconds of pings after the start",
    )
    await jobs.emit(second, status=JobStatus.COMPLETED, progress=100)
    await asyncio.wait_for(asyncio.gather(*feeds), timeout=10)

    for frame in queue_frames():
        assert not any(line.startswith("id:") for line in frame)  # never replayed
        assert set(json.loads(frame[1].removeprefix("data: "))) == {"queue_position", "eta_s"}
    assert [json.loads(f[1].removeprefix("data: "))["queue_position"] for f in queue_frames()] == [
        1,
        0,
    ]  # only changes are sent, and none once the job started
    assert [(e["id"], e["status"]) for e in plain] == [
        (1, "pending"),
        (2, "processing"),
        (3, "completed"),
    ]
    # A resume replays the log only: nothing of the queue frames.
    async with client.stream("GET", path, headers={"Last-Event-ID": "1"}) as response:
        assert response.status_code == 200 and b"event: queue" not in await response.aread()


async def _true(value: bool) -> bool:
    return value
