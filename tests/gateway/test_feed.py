"""The status service's SSE feed, driven by job events written straight to Redis (no worker)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from httpx_sse import aconnect_sse
from redis.asyncio import Redis

from common.jobs import JobStore
from common.keys import Keys
from common.schemas import JobSpec, JobStatus, RenderParams, Task, utcnow
from tests.support.stack import Stack
from tests.support.waiting import async_wait_for


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
            if not sse.data:
                continue  # a heartbeat; see tests/support/client.py
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


async def _true(value: bool) -> bool:
    return value
