"""The worker in process, on a real Redis and the tiny SD checkpoint: micro-batching, per-job
progress and outcomes inside a batch, and the probes."""

from __future__ import annotations

import asyncio
import io
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image
from prometheus_client import REGISTRY
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from common.catalog import demo_catalog
from common.health import health_server
from common.jobs import JobStore
from common.keys import WORKERS_GROUP, Keys
from common.redis_server import RedisServer, free_port
from common.schemas import JobSpec, JobStatus, RenderedJob, RenderParams, Task
from common.usage import UsageStore, today
from gpu_worker.families import family
from gpu_worker.registry import ModelRegistry
from gpu_worker.worker import Worker
from tests.support.ledger import Ledger
from tests.support.waiting import async_wait_for

SIZE = {"width": 64, "height": 64, "num_inference_steps": 4, "guidance_scale": 7.5}
# About 2 s of rendering at 1024x768 on 2 CPU cores: time for three rounds of reading.
LONG_STEPS = {"num_inference_steps": 40}


@pytest.fixture(scope="module")
def registry(tiny_models: Path) -> ModelRegistry:
    catalog = demo_catalog(tiny_models)
    sd = catalog.routes["sd"]
    # One attempt: a failed render fails the job at once instead of waiting for a retry.
    route = sd.model_copy(
        update={"max_attempts": 1, "gpu": sd.gpu.model_copy(update={"max_batch": 4})}
    )
    catalog = catalog.model_copy(update={"routes": {"sd": route}, "v1_route": "sd"})
    registry = ModelRegistry(catalog, ["sd"], torch.device("cpu"))
    registry.load_all()
    return registry


class Deployment:
    """One worker on its own key prefix, and what a test needs to look at its results."""

    def __init__(self, redis: Redis, blobs: Redis, registry: ModelRegistry) -> None:
        self.keys = Keys(f"worker-test-{uuid.uuid4().hex[:8]}:")
        self.redis, self.blobs = redis, blobs
        self.jobs = JobStore(redis, self.keys, task_ttl_s=600)
        self.usage = UsageStore(redis, self.keys)
        self.worker = Worker(
            redis=redis, blobs=blobs, keys=self.keys, jobs=self.jobs, usage=self.usage,
            registry=registry, consumer_name="w", blob_ttl_s=600, block_ms=100,
            claim_idle_ms=5000,
        )  # fmt: skip

    async def submit(self, prompt: str, seed: int, **params: int) -> JobSpec:
        spec = JobSpec(
            job_id=str(uuid.uuid4()),
            model="sd",
            task=Task.T2I,
            params=RenderParams(prompt=prompt, seed=seed, **(SIZE | params)),
            created_at=datetime.now(UTC),
        )
        await self.jobs.submit(spec, message="Queued")
        return spec

    async def run_until_settled(
        self, specs: list[JobSpec], meanwhile: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        """Run the worker (and ``meanwhile`` beside it) until every job is handed on or has
        failed."""

        async def settled() -> bool:
            records = [await self.jobs.get(spec.job_id) for spec in specs]
            handed_on = {r.job_id for r in await self.rendered()}
            return all(
                rec is not None and (rec.job_id in handed_on or rec.status == JobStatus.FAILED)
                for rec in records
            )

        stop = asyncio.Event()
        task = asyncio.create_task(self.worker.run(stop))
        try:
            if meanwhile is not None:
                await meanwhile()
            await async_wait_for(settled, timeout_s=120, what="every job settled")
        finally:
            stop.set()
            await asyncio.wait_for(task, timeout=60)

    async def wait_until_read(self, jobs: int) -> None:
        """Until the worker holds this many jobs read and not yet handed on."""

        async def read() -> bool:
            try:
                summary = await self.redis.xpending(self.keys.job_stream("sd"), WORKERS_GROUP)
            except ResponseError:  # NOGROUP: the worker has not started reading yet
                return False
            return int(summary["pending"]) == jobs

        await async_wait_for(read, timeout_s=30, what=f"{jobs} jobs read")

    async def rendered(self) -> list[RenderedJob]:
        entries = await self.redis.xrange(self.keys.rendered)
        return [RenderedJob.model_validate_json(fields["rendered"]) for _, fields in entries]

    async def image(self, job_id: str) -> np.ndarray:
        (rendered,) = [r for r in await self.rendered() if r.job_id == job_id]
        data = await self.blobs.get(rendered.outputs[0].key)
        return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)


@pytest.fixture
async def deployment(
    redis_server: RedisServer, registry: ModelRegistry
) -> AsyncIterator[Deployment]:
    redis = Redis.from_url(redis_server.url, decode_responses=True)
    blobs = Redis.from_url(redis_server.url)
    yield Deployment(redis, blobs, registry)
    await redis.aclose()
    await blobs.aclose()


def batch_calls() -> tuple[float, float]:
    """(pipeline calls, jobs in them) so far for the sd route."""
    labels = {"model": "sd"}
    count = REGISTRY.get_sample_value("darkroom_batch_size_count", labels) or 0.0
    total = REGISTRY.get_sample_value("darkroom_batch_size_sum", labels) or 0.0
    return count, total


def alone(registry: ModelRegistry, spec: JobSpec) -> np.ndarray:
    (artifact,) = family("stable-diffusion").render(
        registry.pipelines("sd"), spec, None, lambda done, total: None
    )
    assert artifact.image is not None
    return np.asarray(artifact.image.convert("RGB"), dtype=np.int16)


async def test_compatible_jobs_render_in_one_call_and_each_seed_gives_its_own_image(
    deployment: Deployment, registry: ModelRegistry
) -> None:
    specs = [
        await deployment.submit("a red fox", seed=1),
        await deployment.submit("a blue whale", seed=2),
        await deployment.submit("a red fox", seed=3),
    ]
    calls_before, jobs_before = batch_calls()
    await deployment.run_until_settled(specs)
    calls, jobs = batch_calls()
    assert (calls - calls_before, jobs - jobs_before) == (1, 3)  # one pipeline call, three jobs

    for spec in specs:
        batched = await deployment.image(spec.job_id)
        # The same seed batched or alone: the same image (batched matmuls may differ in the
        # last bit of a float, which can move a pixel value by one).
        assert np.abs(batched - alone(registry, spec)).max() <= 1
    first, _, third = [await deployment.image(spec.job_id) for spec in specs]
    assert np.abs(first - third).mean() > 5  # same prompt, other seed: another image


async def test_the_heartbeat_publishes_render_times_and_queue_waits_are_measured(
    deployment: Deployment,
) -> None:
    assert deployment.worker.heartbeat().render_times == {}  # nothing rendered: no estimate
    labels = {"model": "sd", "tenant": "local", "priority": "normal"}
    waits_before = REGISTRY.get_sample_value("darkroom_queue_wait_seconds_count", labels) or 0
    specs = [await deployment.submit(f"prompt {i}", seed=i) for i in range(3)]
    await deployment.run_until_settled(specs)

    timing = deployment.worker.heartbeat().render_times["sd"]
    assert timing.render_s > 0 and 1 <= timing.batch_size <= 3
    waits = REGISTRY.get_sample_value("darkroom_queue_wait_seconds_count", labels)
    assert waits == waits_before + 3  # each job's wait, once


async def test_jobs_arriving_one_by_one_while_the_device_is_busy_share_the_next_call(
    deployment: Deployment,
) -> None:
    # A long render keeps the device busy while three clients submit one after the other,
    # each read in its own round: they wait together and render in one call, not 1 + 2.
    busy = await deployment.submit("a long one", seed=0, width=1024, height=768, **LONG_STEPS)
    specs: list[JobSpec] = [busy]

    async def one_by_one() -> None:
        await deployment.wait_until_read(1)
        for i in range(3):
            specs.append(await deployment.submit(f"client {i}", seed=i))
            await deployment.wait_until_read(len(specs))
        record = await deployment.jobs.get(busy.job_id)
        assert record is not None and record.progress < 90, "the long render ended too soon"

    calls_before, jobs_before = batch_calls()
    await deployment.run_until_settled(specs, meanwhile=one_by_one)
    calls, jobs = batch_calls()
    assert (calls - calls_before, jobs - jobs_before) == (2, 4)  # the long one, then the three


async def test_each_job_in_a_batch_reports_its_own_progress(deployment: Deployment) -> None:
    specs = [await deployment.submit(f"prompt {i}", seed=i) for i in range(3)]
    await deployment.run_until_settled(specs)
    for spec in specs:
        events = await deployment.jobs.events_after(spec.job_id, 0)
        steps = [e.message for e in events if "step" in e.message]
        assert steps and steps[-1].endswith(f"step {SIZE['num_inference_steps']}/4"), steps
        assert all(e.job_id == spec.job_id for e in events)


async def test_one_bad_job_does_not_fail_the_others_in_its_batch(
    deployment: Deployment, ledger: Ledger
) -> None:
    good = await deployment.submit("fine", seed=7)
    # A seed no generator takes: invalid input that slipped past the gateway.
    bad = await deployment.submit("poison", seed=2**70)
    also_good = await deployment.submit("also fine", seed=8)
    await deployment.run_until_settled([good, bad, also_good])

    handed_on = {r.job_id for r in await deployment.rendered()}
    ledger.fault("bad job inside a batch")
    ledger.submitted += 1
    ledger.failed_as_intended += bad.job_id not in handed_on
    ledger.outcome(
        ["completed" if j in handed_on else "lost" for j in (good.job_id, also_good.job_id)], [1, 1]
    )
    assert handed_on == {good.job_id, also_good.job_id}
    record = await deployment.jobs.get(bad.job_id)
    assert record is not None and record.status == JobStatus.FAILED
    assert record.error is not None and "Overflow" in record.error


async def test_probes_say_ready_only_after_the_models_are_warm(
    deployment: Deployment, registry: ModelRegistry
) -> None:
    port = free_port()
    worker = Worker(
        redis=deployment.redis, blobs=deployment.blobs, keys=deployment.keys,
        jobs=deployment.jobs, usage=deployment.usage, registry=registry,
        consumer_name="probe", blob_ttl_s=600,
        block_ms=100, claim_idle_ms=5000,
    )  # fmt: skip
    async with health_server(port, worker.readiness), httpx.AsyncClient() as client:
        base = f"http://127.0.0.1:{port}"
        await async_wait_for(
            lambda: _answers(client, base + "/livez"), timeout_s=10, what="the probe server"
        )
        assert (await client.get(base + "/livez")).status_code == 200
        not_ready = await client.get(base + "/readyz")
        assert not_ready.status_code == 503 and not_ready.json()["reason"] == "loading models"

        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop))
        try:
            await async_wait_for(
                lambda: _ready(client, base), timeout_s=60, what="the worker to be ready"
            )
            metrics = (await client.get(base + "/metrics")).text
            assert "darkroom_pipeline_seconds_total" in metrics
        finally:
            stop.set()
            await asyncio.wait_for(task, timeout=30)


async def _answers(client: httpx.AsyncClient, url: str) -> bool:
    try:
        await client.get(url)
    except httpx.HTTPError:
        return False
    return True


async def _ready(client: httpx.AsyncClient, base: str) -> bool:
    return (await client.get(base + "/readyz")).status_code == 200


def pipeline_seconds() -> float:
    return REGISTRY.get_sample_value("darkroom_pipeline_seconds_total", {"model": "sd"}) or 0.0


async def test_a_batch_shares_its_gpu_time_and_a_job_canceled_in_it_pays_only_its_steps(
    deployment: Deployment,
) -> None:
    steps = 60
    kept = await deployment.submit("kept", seed=1, width=256, height=256, num_inference_steps=steps)
    canceled = await deployment.submit(
        "canceled", seed=2, width=256, height=256, num_inference_steps=steps
    )

    async def cancel_at_step_5() -> None:
        async def at_step_5() -> bool:
            record = await deployment.jobs.get(canceled.job_id)
            assert record is not None
            return "step" in record.message and int(record.message.split()[-1].split("/")[0]) >= 5

        await async_wait_for(at_step_5, timeout_s=60, what="the batch to render 5 steps")
        # As DELETE /api/{id} does: the job ends now, its render stops at a later step.
        assert await deployment.jobs.emit(canceled.job_id, status=JobStatus.CANCELED) is not None

    calls_before, jobs_before = batch_calls()
    seconds_before = pipeline_seconds()
    await deployment.run_until_settled([kept], meanwhile=cancel_at_step_5)
    assert batch_calls() == (calls_before + 1, jobs_before + 2)  # one call for both
    rendered_s = pipeline_seconds() - seconds_before

    async def gpu_s(spec: JobSpec) -> float:
        return float(await deployment.redis.hget(deployment.keys.job(spec.job_id), "gpu_s") or 0)

    kept_s, canceled_s = await gpu_s(kept), await gpu_s(canceled)
    # Every second of the call is paid for, once.
    assert kept_s + canceled_s == pytest.approx(rendered_s, rel=0.05)
    # Half of the steps both rendered, then nothing: far less than the job that rendered on.
    assert 0 < canceled_s < kept_s / 2, (canceled_s, kept_s)
    # The canceled job is counted on its tenant's day with the time it rendered (charged after
    # it ended); the kept one is not finished until the uploader stores it.
    (day,) = (await deployment.usage.read(canceled.tenant, today(), today())).days
    assert [(r.model, r.canceled, r.completed) for r in day.jobs] == [("sd", 1, 0)]
    assert day.gpu_s == pytest.approx(canceled_s)


async def test_a_render_past_its_routes_time_limit_is_stopped_and_fails_its_attempt(
    redis_server: RedisServer, registry: ModelRegistry, tiny_models: Path
) -> None:
    # The sd route (one attempt) with a hard limit far under this render's few seconds.
    limited = registry.routes["sd"].model_copy(update={"max_render_s": 0.5})
    catalog = demo_catalog(tiny_models).model_copy(
        update={"routes": {"sd": limited}, "v1_route": "sd"}
    )
    limited_registry = ModelRegistry(catalog, ["sd"], torch.device("cpu"))
    limited_registry.load_all()
    redis = Redis.from_url(redis_server.url, decode_responses=True)
    blobs = Redis.from_url(redis_server.url)
    deployment = Deployment(redis, blobs, limited_registry)
    try:
        spec = await deployment.submit("a long one", seed=0, width=1024, height=768, **LONG_STEPS)
        await deployment.run_until_settled([spec])
        record = await deployment.jobs.get(spec.job_id)
        assert record is not None and record.status == JobStatus.FAILED
        assert record.error is not None and "limit of 0.5 s" in record.error
        assert await deployment.rendered() == []
        assert deployment.worker.liveness() == (True, "")  # it stepped on: nothing is stuck
    finally:
        await redis.aclose()
        await blobs.aclose()
