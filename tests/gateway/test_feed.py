"""The status service's SSE feed, driven by job events written straight to Redis (no worker)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from httpx_sse import aconnect_sse
from redis.asyncio import Redis

from common.jobs import JobStore
from common.keys import Keys
from common.redis_server import RedisServer
from common.schemas import JobSpec, JobStatus, RenderParams, Task, utcnow
from tests.conftest import _stack
from tests.support.stack import Stack
from tests.support.waiting import async_wait_for

# A request the old code answered by holding the connection open fails here instead.
ANSWER_TIMEOUT_S = 10


@pytest.fixture
async def jobs(redis: Redis, status_stack: Stack) -> JobStore:
    return JobStore(redis, Keys(status_stack.prefix), task_ttl_s=60)


@pytest.fixture
async def client(status_stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=status_stack.base_url, timeout=20) as http:
        yield http


async def new_job(jobs: JobStore) -> str:
    job_id = str(uuid.uuid4())
    params = RenderParams(
        prompt="p", width=64, height=64, num_inference_steps=2, guidance_scale=1.0, seed=1
    )
    await jobs.submit(
        JobSpec(job_id=job_id, model="sd", task=Task.T2I, params=params, created_at=utcnow()),
        message="queued",
    )
    return job_id


async def collect(
    client: httpx.AsyncClient,
    path: str,
    received: list[dict[str, object]],
    headers: dict[str, str] | None = None,
) -> None:
    async with aconnect_sse(client, "GET", path, headers=dict(headers or {})) as source:
        async for sse in source.aiter_sse():
            if not sse.data or sse.event != "message":
                continue  # a heartbeat (see tests/support/client.py), or a queue frame
            received.append({"id": int(sse.id), **json.loads(sse.data)})


async def test_snapshot_then_live_events_then_the_feed_ends(
    client: httpx.AsyncClient, jobs: JobStore
) -> None:
    job_id = await new_job(jobs)
    received: list[dict[str, object]] = []
    feed = asyncio.create_task(collect(client, f"/api/{job_id}/events", received))
    await async_wait_for(lambda: _true(bool(received)), timeout_s=10, what="the snapshot")
    assert received[0]["status"] == "pending" and received[0]["id"] == 1

    await jobs.emit(job_id, status=JobStatus.PROCESSING, progress=30, message="step 1/2")
    await jobs.emit(job_id, progress=10, message="a stale, lower progress")
    await jobs.emit(
        job_id, status=JobStatus.COMPLETED, progress=100, result_urls=["http://x/y.png"]
    )
    await asyncio.wait_for(feed, timeout=10)  # the server closed the feed after the terminal event

    assert [e["id"] for e in received] == [1, 2, 3, 4]
    assert [e["progress"] for e in received] == [0, 30, 30, 100]
    assert received[-1]["result_urls"] == ["http://x/y.png"]


async def test_last_event_id_resumes_after_it(client: httpx.AsyncClient, jobs: JobStore) -> None:
    job_id = await new_job(jobs)
    for pct in (10, 20, 30):
        await jobs.emit(job_id, status=JobStatus.PROCESSING, progress=pct)
    received: list[dict[str, object]] = []
    feed = asyncio.create_task(
        collect(client, f"/v1/jobs/{job_id}/events", received, headers={"Last-Event-ID": "2"})
    )
    await async_wait_for(lambda: _true(len(received) == 2), timeout_s=10, what="missed events")
    await jobs.emit(job_id, status=JobStatus.FAILED, error="boom")
    await asyncio.wait_for(feed, timeout=10)
    assert [(e["id"], e["progress"], e["status"]) for e in received] == [
        (3, 20, "processing"),
        (4, 30, "processing"),
        (5, 30, "failed"),
    ]
    assert received[-1]["error"] == "boom"


async def test_heartbeats_keep_an_idle_feed_open(client: httpx.AsyncClient, jobs: JobStore) -> None:
    job_id = await new_job(jobs)
    comments = 0
    async with client.stream("GET", f"/api/{job_id}/events") as response:
        async for line in response.aiter_lines():
            comments += line.startswith(":")
            if comments >= 2:
                break
    assert comments >= 2


async def test_one_pubsub_connection_serves_every_feed(
    client: httpx.AsyncClient, jobs: JobStore, redis: Redis
) -> None:
    async def pubsub_clients() -> int:
        return sum(1 for c in await redis.client_list() if int(c.get("psub", 0)) > 0)

    before = await pubsub_clients()
    job_ids = [await new_job(jobs) for _ in range(3)]
    received: dict[str, list[dict[str, object]]] = {job_id: [] for job_id in job_ids}
    feeds = [
        asyncio.create_task(collect(client, f"/api/{job_id}/events", received[job_id]))
        for job_id in job_ids
        for _ in range(5)
    ]
    await async_wait_for(
        lambda: _true(all(len(r) == 5 for r in received.values())),
        timeout_s=10,
        what="15 snapshots",
    )
    assert await pubsub_clients() == before
    for job_id in job_ids:
        await jobs.emit(job_id, status=JobStatus.COMPLETED, progress=100)
    await asyncio.wait_for(asyncio.gather(*feeds), timeout=10)
    assert all(r[-1]["status"] == "completed" for r in received.values())
    assert all(len(r) == 10 for r in received.values())


async def answer(
    client: httpx.AsyncClient,
    path: str,
    *,
    headers: dict[str, str] | dict[str, bytes] | None = None,
    params: dict[str, str] | None = None,
) -> httpx.Response:
    """A request that must be answered, not streamed: its whole response, within a deadline."""
    request = client.get(path, headers=headers, params=params)
    return await asyncio.wait_for(request, ANSWER_TIMEOUT_S)


async def test_a_resume_at_or_past_the_terminal_event_is_204(
    client: httpx.AsyncClient, jobs: JobStore
) -> None:
    job_id = await new_job(jobs)
    await jobs.emit(job_id, status=JobStatus.PROCESSING, progress=50)
    await jobs.emit(job_id, status=JobStatus.COMPLETED, progress=100)  # seq 3
    for path, last_event_id in [
        (f"/api/{job_id}/events", "3"),
        (f"/v1/jobs/{job_id}/events", "4"),
        (f"/api/{job_id}/events", str(2**63 - 1)),
    ]:
        by_header = await answer(client, path, headers={"Last-Event-ID": last_event_id})
        by_query = await answer(client, path, params={"last_event_id": last_event_id})
        for response in (by_header, by_query):
            assert (response.status_code, response.content) == (204, b""), (path, last_event_id)

    # Below the terminal event the feed still replays what follows it, then ends.
    received: list[dict[str, object]] = []
    feed = collect(client, f"/api/{job_id}/events", received, headers={"Last-Event-ID": "2"})
    await asyncio.wait_for(feed, ANSWER_TIMEOUT_S)
    assert [(e["id"], e["status"]) for e in received] == [(3, "completed")]


async def test_an_id_past_an_unfinished_jobs_last_event_gets_its_state(
    client: httpx.AsyncClient, jobs: JobStore
) -> None:
    job_id = await new_job(jobs)
    await jobs.emit(job_id, status=JobStatus.PROCESSING, progress=40)  # seq 2
    received: list[dict[str, object]] = []
    feed = asyncio.create_task(
        collect(client, f"/api/{job_id}/events", received, headers={"Last-Event-ID": "7"})
    )
    await async_wait_for(lambda: _true(bool(received)), timeout_s=10, what="the snapshot")
    await jobs.emit(job_id, status=JobStatus.COMPLETED, progress=100)
    await asyncio.wait_for(feed, ANSWER_TIMEOUT_S)
    assert [(e["id"], e["status"], e["progress"]) for e in received] == [
        (2, "processing", 40),
        (3, "completed", 100),
    ]


@pytest.mark.parametrize("raw", ["²", "١٢", str(2**63), "-1", "9" * 5000])
async def test_an_invalid_event_id_is_422(
    client: httpx.AsyncClient, jobs: JobStore, raw: str
) -> None:
    job_id = await new_job(jobs)
    path = f"/api/{job_id}/events"
    by_header = await answer(client, path, headers={"Last-Event-ID": raw.encode()})
    by_query = await answer(client, path, params={"last_event_id": raw})
    for response in (by_header, by_query):
        assert response.status_code == 422
        assert response.json()["fields"][0]["field"] == "Last-Event-ID"


@pytest.fixture
def capped_stack(
    redis_server: RedisServer, models_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """A second status service that holds at most two open feeds."""
    extra = {"DARKROOM_SSE_MAX_FEEDS": "2", "DARKROOM_SSE_PING_S": "0.3"}
    stack = _stack("capped", ("status",), redis_server, models_file, tmp_path_factory, extra)
    yield stack
    stack.stop_all()


async def test_open_feeds_are_capped(capped_stack: Stack, redis: Redis) -> None:
    jobs = JobStore(redis, Keys(capped_stack.prefix), task_ttl_s=60)
    job_id = await new_job(jobs)
    path = f"/api/{job_id}/events"
    async with httpx.AsyncClient(base_url=capped_stack.base_url, timeout=20) as client:
        received: list[list[dict[str, object]]] = [[], []]
        feeds = [asyncio.create_task(collect(client, path, r)) for r in received]
        await async_wait_for(lambda: _true(all(received)), timeout_s=10, what="two snapshots")

        refused = await answer(client, f"/v1/jobs/{job_id}/events")
        assert refused.status_code == 503
        assert int(refused.headers["Retry-After"]) > 0
        assert refused.json()["error"] == "too_many_feeds"

        # A client that goes away frees its slot.
        feeds[0].cancel()

        async def admitted() -> bool:
            async with client.stream("GET", path) as response:
                return response.status_code == 200

        await async_wait_for(admitted, timeout_s=10, what="a freed slot")
        # So does a feed that ends with its job.
        await jobs.emit(job_id, status=JobStatus.COMPLETED, progress=100)
        await asyncio.wait_for(feeds[1], ANSWER_TIMEOUT_S)

        async def both_admitted() -> bool:  # the job is finished: each feed is its snapshot
            responses = await asyncio.gather(*(answer(client, path) for _ in range(2)))
            return all(r.status_code == 200 for r in responses)

        await async_wait_for(both_admitted, timeout_s=10, what="both slots free again")


async def _true(value: bool) -> bool:
    return value
