"""How jobs read ahead become batches: at dispatch time, oldest first, never past a batch."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest

from gpu_worker.batching import WaitingJobs


@dataclass(frozen=True)
class Job:
    name: str
    size: int = 64  # jobs of one size share a call
    route_batch: int = 4


def waiting(limit: int = 4) -> WaitingJobs[Job]:
    return WaitingJobs(
        limit=limit, batch_key=lambda job: job.size, max_batch=lambda job: job.route_batch
    )


async def test_jobs_that_arrive_before_the_batch_is_taken_join_it() -> None:
    jobs = waiting()
    # Read one round at a time, as clients resubmit one by one.
    for name in ("a", "b", "c"):
        await jobs.add([Job(name)])
    assert [job.name for job in await jobs.next_batch() or []] == ["a", "b", "c"]


async def test_the_oldest_job_decides_and_others_keep_their_turn() -> None:
    jobs = waiting(limit=8)
    await jobs.add([Job("big", size=512), Job("a"), Job("big2", size=512), Job("b")])
    assert [job.name for job in await jobs.next_batch() or []] == ["big", "big2"]
    assert [job.name for job in await jobs.next_batch() or []] == ["a", "b"]


async def test_a_batch_never_exceeds_its_route_size() -> None:
    jobs = waiting(limit=8)
    adding = asyncio.create_task(jobs.add([Job(str(i), route_batch=3) for i in range(5)]))
    assert [job.name for job in await jobs.next_batch() or []] == ["0", "1", "2"]
    assert [job.name for job in await jobs.next_batch() or []] == ["3", "4"]
    await asyncio.wait_for(adding, timeout=1)


async def test_a_route_that_does_not_batch_renders_one_at_a_time() -> None:
    jobs: WaitingJobs[Job] = WaitingJobs(
        limit=4, batch_key=lambda job: job.name, max_batch=lambda job: 1
    )
    adding = asyncio.create_task(jobs.add([Job("a"), Job("b")]))
    assert [job.name for job in await jobs.next_batch() or []] == ["a"]
    assert [job.name for job in await jobs.next_batch() or []] == ["b"]
    await asyncio.wait_for(adding, timeout=1)


async def test_reading_pauses_while_a_full_batch_waits() -> None:
    jobs = waiting(limit=2)
    await jobs.add([Job("a")])
    adding = asyncio.create_task(jobs.add([Job("b")]))
    await asyncio.sleep(0.05)
    assert not adding.done() and len(jobs) == 2  # queued, but the intake may not read on
    await jobs.next_batch()
    await asyncio.wait_for(adding, timeout=1)


async def test_reading_pauses_once_the_next_batch_is_full() -> None:
    jobs = waiting(limit=8)
    adding = asyncio.create_task(jobs.add([Job(str(i), route_batch=2) for i in range(2)]))
    await asyncio.sleep(0.05)
    assert not adding.done()  # more could only wait for a later batch
    await jobs.next_batch()
    await asyncio.wait_for(adding, timeout=1)


async def test_a_route_that_renders_alone_holds_back_one_job() -> None:
    jobs: WaitingJobs[Job] = WaitingJobs(
        limit=8, batch_key=lambda job: job.name, max_batch=lambda job: 1
    )
    adding = asyncio.create_task(jobs.add([Job("a")]))
    await asyncio.sleep(0.05)
    assert not adding.done()
    await jobs.next_batch()
    await asyncio.wait_for(adding, timeout=1)


async def test_closing_ends_the_render_stage_after_what_waits() -> None:
    jobs = waiting()
    await jobs.add([Job("a")])
    await jobs.close()
    assert [job.name for job in await jobs.next_batch() or []] == ["a"]
    assert await jobs.next_batch() is None


async def test_take_all_empties_it_and_frees_the_intake() -> None:
    jobs = waiting(limit=1)
    adding = asyncio.create_task(jobs.add([Job("a"), Job("b", size=512)]))
    await asyncio.sleep(0.05)
    assert [job.name for job in await jobs.take_all()] == ["a", "b"]
    await asyncio.wait_for(adding, timeout=1)
    assert len(jobs) == 0


@pytest.mark.parametrize("limit", [0, -3])
async def test_a_limit_below_one_still_lets_a_job_wait(limit: int) -> None:
    jobs = waiting(limit=limit)
    adding = asyncio.create_task(jobs.add([Job("a")]))
    assert [job.name for job in await jobs.next_batch() or []] == ["a"]
    await asyncio.wait_for(adding, timeout=1)
