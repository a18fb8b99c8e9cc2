"""The finish stage on a real Redis, without a pipeline: a rendered job's bytes and its entry in
``rendered``, written with the ack only while the job is still this worker's."""

from __future__ import annotations

import asyncio
import io
import time
import uuid
from collections.abc import AsyncIterator

import pytest
import torch
from PIL import Image
from redis.asyncio import Redis

from common.catalog import production_catalog
from common.consumer import Delivery, StreamConsumer
from common.jobs import JobStore
from common.keys import WORKERS_GROUP, Keys
from common.redis_server import RedisServer
from common.scheduler import Scheduler
from common.schemas import JobStatus, RenderedJob
from common.usage import UsageStore, render_token
from gpu_worker.families import Artifact
from gpu_worker.hand_off import HandOff
from gpu_worker.job import Job
from gpu_worker.progress import HANDED_OFF_MESSAGE, RENDER_END_PCT, BatchProgress
from gpu_worker.registry import ModelRegistry
from tests.support.jobs import submit_job

ROUTE = "sd"


class Rig:
    """A worker's hand-off on its own key prefix, and one job read from its route's stream."""

    def __init__(self, redis: Redis, blobs: Redis) -> None:
        self.keys = Keys(f"hand-off-test-{uuid.uuid4().hex[:8]}:")
        self.redis, self.blobs = redis, blobs
        self.jobs = JobStore(redis, self.keys, task_ttl_s=600)
        self.stream = self.keys.job_stream(ROUTE)
        self.consumer = StreamConsumer(
            redis=redis,
            streams=[self.stream],
            group=WORKERS_GROUP,
            consumer="w",
            handler=self._take,
            dead_stream=self.keys.dead,
            block_ms=100,
        )
        self._read: list[Delivery] = []
        self._stop = asyncio.Event()
        # Never loaded: the hand-off reads only the routes' settings and fingerprints.
        registry = ModelRegistry(production_catalog(), [ROUTE], torch.device("cpu"))
        self.hand_off = HandOff(
            jobs=self.jobs,
            usage=UsageStore(redis, self.keys),
            consumer=self.consumer,
            keys=self.keys,
            registry=registry,
            blob_ttl_s=600,
        )

    async def _take(self, deliveries: list[Delivery]) -> None:
        for delivery in deliveries:
            self.consumer.hold(delivery)  # on to the render stage, as the worker does
        self._read += deliveries
        self._stop.set()

    async def read_job(self) -> Job:
        """Submit a job and read it as the worker's intake does: held by this consumer."""
        spec = await submit_job(self.jobs, self.keys)
        await Scheduler(self.redis, self.keys).refill([ROUTE], 1, now=time.time())
        await asyncio.wait_for(self.consumer.run(self._stop), timeout=30)
        (delivery,) = self._read
        assert self.consumer.holds(delivery)
        job = Job(delivery, spec, started_at=time.perf_counter())
        job.gpu_s, job.render = 1.5, render_token()
        return job

    async def finish(self, job: Job, artifacts: list[Artifact]) -> None:
        progress = BatchProgress(self.jobs, [])
        progress.start()
        await self.hand_off.finish(progress, [(job, artifacts)])

    async def rendered(self) -> list[RenderedJob]:
        entries = await self.redis.xrange(self.keys.rendered)
        return [RenderedJob.model_validate_json(fields["rendered"]) for _, fields in entries]

    async def entry_left(self, job: Job) -> bool:
        """Whether the job's entry is still in its stream (an ack deletes it)."""
        return bool(await self.redis.xrange(self.stream, job.delivery.msg_id, job.delivery.msg_id))


@pytest.fixture
async def rig(redis_server: RedisServer) -> AsyncIterator[Rig]:
    redis = Redis.from_url(redis_server.url, decode_responses=True)
    blobs = Redis.from_url(redis_server.url)
    yield Rig(redis, blobs)
    await redis.aclose()
    await blobs.aclose()


async def test_a_rendered_job_is_handed_to_the_uploader_with_its_bytes_and_acked(
    rig: Rig,
) -> None:
    job = await rig.read_job()
    picture = Image.new("RGB", (64, 64), (200, 30, 40))

    await rig.finish(job, [Artifact(image=picture)])

    (rendered,) = await rig.rendered()
    assert rendered.job_id == job.spec.job_id
    (output,) = rendered.outputs
    assert (output.content_type, output.extension) == ("image/png", "png")
    data = await rig.blobs.get(output.key)
    assert data is not None
    assert Image.open(io.BytesIO(data)).convert("RGB").tobytes() == picture.tobytes()
    assert not await rig.entry_left(job)  # acked with the hand-off
    record = await rig.jobs.get(job.spec.job_id)
    assert record is not None
    assert (record.status, record.progress, record.message) == (
        JobStatus.PROCESSING,
        RENDER_END_PCT,
        HANDED_OFF_MESSAGE,
    )
    # The render's GPU time is on the job's record before the uploader can complete it.
    gpu_s = await rig.redis.hget(rig.keys.job(job.spec.job_id), "gpu_s")
    assert float(gpu_s or 0) == pytest.approx(1.5)


async def test_a_worker_that_lost_its_claim_hands_nothing_on(rig: Rig) -> None:
    job = await rig.read_job()
    # Another worker takes the entry over (this one looked stalled).
    await rig.redis.xclaim(rig.stream, WORKERS_GROUP, "other", 0, [job.delivery.msg_id])

    await rig.finish(job, [Artifact(image=Image.new("RGB", (64, 64)))])

    assert await rig.rendered() == []
    assert not await rig.blobs.exists(rig.keys.blob(job.spec.job_id, "output:0"))
    assert await rig.entry_left(job)  # still the other worker's to finish
    record = await rig.jobs.get(job.spec.job_id)
    assert record is not None and record.message != HANDED_OFF_MESSAGE


async def test_an_output_that_cannot_be_encoded_fails_its_job(rig: Rig) -> None:
    job = await rig.read_job()

    await rig.finish(job, [Artifact()])  # neither an image nor frames

    assert await rig.rendered() == []
    record = await rig.jobs.get(job.spec.job_id)
    assert record is not None and record.status == JobStatus.FAILED
    assert record.error is not None and record.error.startswith("Could not encode the output")
    assert not await rig.entry_left(job)  # failed and acked: not rendered again
