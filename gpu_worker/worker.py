"""The GPU worker: a ``workers`` group member that renders jobs and hands the bytes to the uploader.

Three stages keep the device busy:

- intake (the consumer's handler): reads the next round and fetches and decodes input images,
  while the render stage works; up to a batch of jobs waits ready (``batching.WaitingJobs``);
- render: as soon as the previous call returns, the waiting jobs that are compatible with the
  oldest become one pipeline call, on a dedicated render thread with nothing else on it; their
  "processing" and progress events go out beside it;
- finish (``hand_off.HandOff``): PNG/MP4 encoding, blob writes, the hand-off to ``rendered`` and
  the ack, while the next batch renders.

A watchdog on the loop watches the render thread's steps (``watchdog.StepClock``): a render stuck
past its route's ``stall_timeout_s`` gives its jobs to another worker, and this worker stops
reading and reports itself not live until it is restarted. A route whose weights do not load
fails its jobs at once while the others serve.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from pydantic import ValidationError
from redis.asyncio import Redis

from common.consumer import Delivery, StreamConsumer, StreamPolicy, sleep_unless
from common.cost import job_cost
from common.health import redis_writable
from common.jobs import DEADLINE_EXCEEDED, JobStore
from common.keys import WORKERS_GROUP, Keys
from common.logging import get_logger
from common.previews import PreviewStore
from common.redis_errors import REDIS_TRANSIENT, describe
from common.scheduler import DEFAULT_AGING_S, Scheduler
from common.schemas import JobSpec, JobStatus, WorkerHeartbeat
from common.tenants import PRIORITIES
from common.usage import UsageStore, render_token
from gpu_worker.batching import WaitingJobs
from gpu_worker.encoding import decode_image
from gpu_worker.families import Artifact, PreviewSink, StepCallback, batch_family, family
from gpu_worker.hand_off import HandOff
from gpu_worker.job import Job
from gpu_worker.metering import GpuMeter
from gpu_worker.metrics import (
    BATCH_SIZE,
    PIPELINE_SECONDS,
    QUEUE_WAIT_SECONDS,
    RENDER_STALLS,
)
from gpu_worker.previews import JobPreviews
from gpu_worker.progress import (
    CLAIM_LOST,
    RENDER_STALLED,
    RENDER_TOO_LONG,
    SHUTTING_DOWN,
    BatchProgress,
    ProgressReporter,
    RenderInterrupted,
)
from gpu_worker.registry import ModelRegistry, RouteUnavailable
from gpu_worker.render_times import RecentRenders
from gpu_worker.watchdog import WATCHDOG_INTERVAL_S, StepClock

log = get_logger(__name__)

# Failures a retry cannot fix: bad input that slipped through, weights that do not load.
PERMANENT_ERRORS = (ValueError, TypeError, OSError)
HEARTBEAT_INTERVAL_S = 5.0
# Fields that may differ between jobs rendered in one pipeline call.
PER_JOB_PARAMS = {"prompt", "negative_prompt", "seed"}

T = TypeVar("T")


class Worker:
    def __init__(
        self,
        *,
        redis: Redis,
        blobs: Redis,
        keys: Keys,
        jobs: JobStore,
        usage: UsageStore,
        registry: ModelRegistry,
        consumer_name: str,
        blob_ttl_s: int,
        block_ms: int,
        claim_idle_ms: int,
        drain_grace_s: float = 60.0,
        priority_aging_s: float = DEFAULT_AGING_S,
        preload: bool = True,
        hang_at_step: int | None = None,
        step_delay_s: float | None = None,
    ) -> None:
        self._redis = redis
        self._blobs = blobs
        self._keys = keys
        self._jobs = jobs
        self._registry = registry
        self._drain_grace_s = drain_grace_s
        self._preload = preload
        self._hang_at_step = hang_at_step
        self._step_delay_s = step_delay_s
        self._previews = PreviewStore(redis, keys)
        self._scheduler = Scheduler(redis, keys, aging_s=priority_aging_s)
        self._route_of = {keys.job_stream(name): name for name in registry.route_names}
        self.consumer = StreamConsumer(
            redis=redis,
            streams=[keys.job_stream(name) for name in registry.route_names],
            group=WORKERS_GROUP,
            consumer=consumer_name,
            handler=self.take,
            dead_stream=keys.dead,
            dead_counts=keys.dead_counts,
            block_ms=block_ms,
            policies={
                keys.job_stream(route.name): StreamPolicy(
                    claim_idle_ms=route.claim_idle_ms or claim_idle_ms,
                    max_deliveries=route.max_attempts,
                    max_batch=route.gpu.max_batch,
                    batch_window_ms=route.gpu.batch_window_ms,
                )
                for route in registry.routes.values()
            },
            on_dead=self._on_dead,
            on_claim_lost=self._claim_lost,
            before_read=self._refill,
        )
        self._hand_off = HandOff(
            jobs=jobs,
            usage=usage,
            consumer=self.consumer,
            keys=keys,
            registry=registry,
            blob_ttl_s=blob_ttl_s,
        )
        # Jobs read and ready, waiting for the render stage: at most the largest batch.
        self._waiting: WaitingJobs[Job] = WaitingJobs(
            limit=max(route.gpu.max_batch for route in registry.routes.values()),
            batch_key=self._batch_key,
            max_batch=lambda job: self._registry.routes[job.spec.model].gpu.max_batch,
            rank=lambda job: PRIORITIES.index(job.spec.priority),
        )
        self._rendering: dict[str, Job] = {}  # by msg_id
        self._finishing: asyncio.Task[None] | None = None
        self._render_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="render")
        # Previews are mapped and JPEG-encoded here, never on the render thread.
        self._preview_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="previews")
        self._clock = StepClock()
        self._recent = RecentRenders()
        self.models_ready = False
        # Why the render thread is stuck, once the watchdog found it so: not live from then on.
        self.stalled: str | None = None
        self._stuck = asyncio.Event()
        self._releasing: asyncio.Task[None] | None = None
        # Each job read, with its cost, until the consumer no longer holds it (rendered and
        # handed off, failed, released…): the work a scale-in would interrupt (pod_cost.py).
        self._in_hand: dict[tuple[str, str], tuple[Delivery, float]] = {}
        self.work_changed = asyncio.Event()  # set when jobs are taken in

    async def readiness(self) -> tuple[bool, str]:
        """Ready: models loaded and warmed up (some route at least), and Redis taking writes."""
        if self.stalled is not None:
            return False, self.stalled
        if not self.models_ready:
            return False, "loading models"
        errors = self._registry.load_errors
        if errors and set(errors) == set(self._registry.route_names):
            return False, f"no route could be loaded: {errors}"
        return await redis_writable(self._redis, self._keys.probe(self.consumer.consumer))

    def liveness(self) -> tuple[bool, str]:
        """Not live once a render is stuck: only a restart frees the device."""
        return self.stalled is None, self.stalled or ""

    def work_in_hand(self) -> float:
        """Megapixel-steps of the jobs this worker holds: waiting, rendering or handing off."""
        for key, (delivery, _) in list(self._in_hand.items()):
            if not self.consumer.holds(delivery):
                del self._in_hand[key]
        return sum(cost for _, cost in self._in_hand.values())

    def serving(self) -> dict[str, object]:
        """For ``/readyz``: the routes this worker serves, and those that failed to load."""
        errors = self._registry.load_errors
        return {
            "serving": [name for name in self._registry.route_names if name not in errors],
            "failed": errors,
        }

    async def run(self, stop: asyncio.Event) -> None:
        if self._preload:
            await self._on_render_thread(self._registry.load_all)
        self.models_ready = True
        log.info("worker.ready", device=str(self._registry.device), **self.serving())
        done = asyncio.Event()
        halt = asyncio.Event()  # stop reading: told to stop, or the render is stuck
        relay = asyncio.create_task(_set_after(stop, halt), name="worker-halt")
        background = [
            asyncio.create_task(self._heartbeat(done), name="worker-heartbeat"),
            asyncio.create_task(self._drain_deadline(stop, done), name="worker-drain"),
            asyncio.create_task(self._watchdog(done, halt), name="worker-watchdog"),
        ]
        renderer = asyncio.create_task(self._render_stage(stop), name="worker-render")
        try:
            async with self.consumer.claims_kept():
                try:
                    await self.consumer.run(halt)
                finally:
                    await self._waiting.close()  # the render stage ends after what it holds,
                    await self._ended_or_stuck(renderer)  # unless it is stuck in a render
                    if self._finishing is not None:
                        await self._finishing
                if self._releasing is not None:  # stuck: wait for the restart /livez asks for
                    await self._releasing
                    await stop.wait()
        finally:
            relay.cancel()
            done.set()
            for task in background:
                await task
            renderer.cancel()  # still running only if stuck; its thread goes on regardless
            with contextlib.suppress(asyncio.CancelledError):
                await renderer
            self._render_thread.shutdown(wait=self.stalled is None)
            self._preview_thread.shutdown(wait=False, cancel_futures=True)

    async def _ended_or_stuck(self, renderer: asyncio.Task[None]) -> None:
        stuck = asyncio.create_task(self._stuck.wait())
        await asyncio.wait([renderer, stuck], return_when=asyncio.FIRST_COMPLETED)
        stuck.cancel()

    async def _heartbeat(self, done: asyncio.Event) -> None:
        """Say every few seconds which routes are resident here (``GET /api/models``)."""
        name = self.consumer.consumer
        while not done.is_set() and self.stalled is None:  # a stuck worker serves nothing
            beat = self.heartbeat()
            # On an outage the consumer loop reports it; a silent worker is stale after a while.
            with contextlib.suppress(*REDIS_TRANSIENT):
                await self._redis.hset(self._keys.workers, name, beat.model_dump_json())
            await sleep_unless(done, HEARTBEAT_INTERVAL_S)
        with contextlib.suppress(*REDIS_TRANSIENT):
            await self._redis.hdel(self._keys.workers, name)

    def heartbeat(self) -> WorkerHeartbeat:
        return WorkerHeartbeat(
            consumer=self.consumer.consumer,
            device=str(self._registry.device),
            routes=self._registry.route_names,
            loaded=self._registry.loaded_route_names,
            failed=self._registry.load_errors,
            fingerprints=self._registry.fingerprints,
            render_times=self._recent.snapshot(),
            ts=time.time(),
        )

    async def _drain_deadline(self, stop: asyncio.Event, done: asyncio.Event) -> None:
        """After SIGTERM the render in hand gets the drain grace; then it stops at its next
        step and its jobs go back to the group for another worker."""
        waiters = [asyncio.create_task(stop.wait()), asyncio.create_task(done.wait())]
        _, pending = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        for waiter in pending:
            waiter.cancel()
        await sleep_unless(done, self._drain_grace_s)
        for job in list(self._rendering.values()):
            if job.reporter is not None:
                job.reporter.stop(SHUTTING_DOWN)

    async def _watchdog(self, done: asyncio.Event, halt: asyncio.Event) -> None:
        """Trips once the render thread goes without a step for its route's stall timeout."""
        while not done.is_set():
            await sleep_unless(done, WATCHDOG_INTERVAL_S)
            if self._clock.overrun_s() is not None:  # still stepping: it stops at the next
                for job in list(self._rendering.values()):
                    if job.reporter is not None:
                        job.reporter.stop(RENDER_TOO_LONG)
            stalled_s = self._clock.stalled_s()
            if stalled_s is not None:
                halt.set()
                await self._render_stalled(stalled_s)
                return

    async def _render_stalled(self, stalled_s: float) -> None:
        """The render thread is stuck in a call nothing can interrupt: its jobs go to another
        worker now, this attempt counted, and this worker is not live from now on."""
        jobs = list(self._rendering.values())
        model = jobs[0].spec.model if jobs else "unknown"
        self.stalled = f"render stuck: no denoising step for {stalled_s:.0f} s on route {model}"
        self._stuck.set()
        # The render stage is stuck: what the intake read, or reads before it stops, goes back.
        self._releasing = asyncio.create_task(self._release_waiting(), name="worker-release")
        RENDER_STALLS.labels(model).inc()
        log.error(
            "worker.render_stalled",
            model=model,
            stalled_s=round(stalled_s, 1),
            jobs=[job.spec.job_id for job in jobs],
        )
        for job in jobs:
            if job.reporter is not None:
                job.reporter.stop(RENDER_STALLED)  # should the call ever return: no output
            await self._hand_off.release(job, count_attempt=True)
            with contextlib.suppress(*REDIS_TRANSIENT):
                await self._jobs.emit(
                    job.spec.job_id,
                    message="The render stalled; another worker takes the job over",
                    fields={"last_error": self.stalled},
                )

    async def _release_waiting(self) -> None:
        while (batch := await self._waiting.next_batch()) is not None:
            for job in batch:
                await self._hand_off.release(job)

    # -- intake ---------------------------------------------------------------------------

    async def _refill(self, streams: Sequence[str], count: int) -> None:
        """Before each read: the scheduler puts the best waiting jobs in the ready streams."""
        await self._scheduler.refill([self._route_of[s] for s in streams], count, now=time.time())

    async def take(self, deliveries: list[Delivery]) -> None:
        """The consumer's handler: admit a round and leave it waiting for the render stage;
        return when the intake may read again."""
        read: list[tuple[Delivery, JobSpec]] = []
        for delivery in deliveries:
            try:
                read.append((delivery, JobSpec.model_validate_json(delivery.fields["job"])))
            except (KeyError, ValidationError):
                log.exception("job.unreadable", fields=delivery.fields)
                await self.consumer.bury(delivery)
        # Whether each job still waits for a render: the round's records in one round trip.
        statuses = await self._jobs.statuses([spec.job_id for _, spec in read])
        admitted = await all_of(
            self._admit(Job(delivery, spec), status)
            for (delivery, spec), status in zip(read, statuses, strict=True)
        )
        jobs = [job for job in admitted if job is not None]
        for job in jobs:
            self.consumer.hold(job.delivery)
        await self._waiting.add(jobs)

    async def _admit(self, job: Job, status: JobStatus | None) -> Job | None:
        delivery, spec = job.delivery, job.spec
        with job.log:
            if status is None or status.terminal:
                log.info("job.skipped", reason="expired" if status is None else status.value)
                await self.consumer.ack(delivery)
                return None
            unavailable = self._registry.unavailable(spec.model)
            if unavailable is not None:  # its weights did not load here: say so at once
                await self._hand_off.fail(job, str(unavailable))
                return None
            if spec.input_blob is not None:
                data: bytes | None = await self._blobs.get(  # type: ignore[assignment]  # redis-py's union return
                    spec.input_blob
                )
                try:
                    if data is None:
                        raise ValueError("the input image expired before the job started")
                    job.image = await asyncio.to_thread(decode_image, data)
                except PERMANENT_ERRORS as exc:
                    await self._hand_off.fail(job, f"Invalid input image: {exc}")
                    return None
        self._in_hand[(delivery.stream, delivery.msg_id)] = (
            delivery,
            job_cost(spec.params, spec.task),
        )
        self.work_changed.set()
        return job

    def _batch_key(self, job: Job) -> str:
        """Jobs with equal keys may share a pipeline call (same route, task, size, steps,
        guidance…); on a route that does not batch, every job is alone."""
        if self._registry.routes[job.spec.model].gpu.max_batch == 1:
            return job.delivery.msg_id
        shared = job.spec.params.model_dump(mode="json", exclude=PER_JOB_PARAMS)
        return json.dumps([job.spec.model, job.spec.task, shared], sort_keys=True)

    # -- render ---------------------------------------------------------------------------

    async def _render_stage(self, stop: asyncio.Event) -> None:
        while (batch := await self._waiting.next_batch()) is not None:
            # Read but not started: another worker takes them at once.
            if stop.is_set() or self.stalled is not None:
                for job in batch + await self._waiting.take_all():
                    await self._hand_off.release(job)
                continue
            try:
                await self._render(batch)
            except REDIS_TRANSIENT as exc:  # the stage goes on; the batch goes back to the group
                log.warning("batch.not_finished", error=describe(exc))
                for job in batch:
                    await self._hand_off.release(job)
            except Exception:  # a bug: each entry is delivered again after its idle time, and
                # counted, so a job that keeps failing ends in the dead stream, not in a loop
                log.exception("batch.not_finished")
                for job in batch:
                    self.consumer.leave_pending(job.delivery)

    async def _render(self, batch: list[Job]) -> None:
        jobs = [job for job in batch if await self._start(job)]
        if not jobs:
            return
        # A first job on a route waits for its weights; say so on the job's feed.
        loaded = self._registry.is_loaded(jobs[0].spec.model)
        for job in jobs:
            job.reporter = ProgressReporter(
                job.spec.job_id,
                deadline_at=job.spec.deadline_at,
                message="Generating" if loaded else "Loading model",
                fields={"attempts": job.delivery.attempt},
                previews=(
                    JobPreviews(self._previews, job.spec.job_id, self._preview_thread)
                    if job.spec.preview
                    else None
                ),
            )
            self._rendering[job.delivery.msg_id] = job
        progress = BatchProgress(
            self._jobs, [job.reporter for job in jobs if job.reporter is not None]
        )
        meter = GpuMeter([job_cost(job.spec.params, job.spec.task) for job in jobs])
        progress.start()
        try:
            outputs = await self._on_render_thread(
                self._pipeline_call,
                jobs,
                progress.on_step,
                meter,
                progress.on_latents if progress.wants_previews else None,
            )
        except RenderInterrupted as exc:
            await progress.close()
            _metered(jobs, meter)
            for job in jobs:
                await self._hand_off.interrupted(job, job.stop_reason or exc.reason)
            return
        except Exception as exc:  # an inference error must not kill the worker
            await progress.close()
            await self._render_failed(jobs, exc)
            return
        finally:
            for job in jobs:
                self._rendering.pop(job.delivery.msg_id, None)
        _metered(jobs, meter)
        if self._finishing is not None:
            await self._finishing
        rendered = list(zip(jobs, outputs, strict=True))
        self._finishing = asyncio.create_task(
            self._hand_off.finish(progress, rendered), name="worker-finish"
        )

    async def _start(self, job: Job) -> bool:
        """``False`` if the job is no longer this worker's to render, or out of time. Nothing
        here waits on Redis unless the job ends: the device is idle meanwhile."""
        with job.log:
            if not self.consumer.holds(job.delivery):
                log.warning("job.claim_lost", stage="queued")
                return False
            if job.spec.deadline_at is not None and time.time() > job.spec.deadline_at:
                await self._hand_off.fail(job, DEADLINE_EXCEEDED)
                return False
            log.info("job.started", task=job.spec.task.value)
            if job.started_at == 0.0 and not job.delivery.reclaimed:  # its first start only
                waited_s = time.time() - job.spec.created_at.timestamp()
                QUEUE_WAIT_SECONDS.labels(
                    job.spec.model, job.spec.tenant, job.spec.priority
                ).observe(waited_s)
            job.started_at = time.perf_counter()
            return True

    def _pipeline_call(
        self,
        jobs: list[Job],
        on_step: StepCallback,
        meter: GpuMeter,
        previews: PreviewSink | None = None,
    ) -> list[list[Artifact]]:
        """On the render thread: one pipeline call for the batch; each job's outputs. ``meter``
        times it from when the weights are at hand to its return; ``previews`` hears the
        latents when some job asked for previews."""
        spec = jobs[0].spec
        route = self._registry.routes[spec.model]
        pipelines = self._registry.pipelines(spec.model)  # loading makes no steps: not watched

        def watched(done: int, total: int) -> None:
            self._clock.tick()
            try:
                on_step(done, total)
            finally:  # after on_step: a job it stopped (its deadline passed) pays no further
                meter.step([job.stop_reason is None for job in jobs])
            if done == self._hang_at_step:  # test aid: a CUDA call that never returns
                threading.Event().wait()
            if self._step_delay_s is not None:  # test aid: a render long enough to watch
                time.sleep(self._step_delay_s)

        began = time.perf_counter()
        self._clock.start(route.stall_after_s, route.max_render_s)
        meter.start()
        try:
            if len(jobs) == 1:
                outputs = [
                    family(route.family).render(pipelines, spec, jobs[0].image, watched, previews)
                ]
            else:
                batcher = batch_family(route.family)
                assert batcher is not None  # the registry refuses batches it cannot render
                outputs = batcher.render_batch(
                    pipelines,
                    [job.spec for job in jobs],
                    [job.image for job in jobs],
                    watched,
                    previews,
                )
            # Only whole calls: what queued jobs can expect (not an interrupted one's time).
            self._recent.observe(spec.model, time.perf_counter() - began, len(jobs))
            return outputs
        finally:
            meter.stop()
            self._clock.stop()
            PIPELINE_SECONDS.labels(spec.model).inc(time.perf_counter() - began)
            BATCH_SIZE.labels(spec.model).observe(len(jobs))

    async def _render_failed(self, jobs: list[Job], exc: Exception) -> None:
        if len(jobs) > 1:
            # One bad job must not fail the others: each renders alone, and fails alone.
            log.warning("batch.failed", error=str(exc), jobs=[job.spec.job_id for job in jobs])
            for job in jobs:
                await self._render([job])
            return
        (job,) = jobs
        with job.log:
            if isinstance(exc, RouteUnavailable):  # recorded by the registry, logged there
                await self._hand_off.fail(job, str(exc))
            elif isinstance(exc, PERMANENT_ERRORS):  # retrying cannot help: fail now
                log.error("job.render_failed", retry=False, exc_info=exc)
                await self._hand_off.fail(job, f"Model inference error: {exc}")
            else:
                await self._hand_off.retry_later(job, exc)

    async def _claim_lost(self, delivery: Delivery) -> None:
        """Another worker took the entry over (this one stalled): stop rendering it."""
        job = self._rendering.get(delivery.msg_id)
        if job is not None and job.reporter is not None:
            job.reporter.stop(CLAIM_LOST)

    async def _on_dead(self, delivery: Delivery) -> None:
        """An entry that ran out of deliveries: its workers kept dying or stalling."""
        try:
            spec = JobSpec.model_validate_json(delivery.fields["job"])
        except (KeyError, ValidationError):
            return  # unreadable: there is no job record to mark
        await self._jobs.emit(
            spec.job_id,
            status=JobStatus.FAILED,
            message="Generation failed",
            error=f"Gave up after {delivery.attempt - 1} attempts: the worker stopped responding",
        )

    async def _on_render_thread(self, fn: Callable[..., T], *args: object) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._render_thread, functools.partial(fn, *args))


async def all_of(calls: Iterable[Awaitable[T]]) -> list[T]:
    """Run side by side; every one ends before the first error, if any, is raised (none is left
    running on its own)."""
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
    return outcomes  # type: ignore[return-value]  # no exceptions left


async def _set_after(source: asyncio.Event, target: asyncio.Event) -> None:
    await source.wait()
    target.set()


def _metered(jobs: list[Job], meter: GpuMeter) -> None:
    """Note each job's share of the pipeline call, under a new name for its charge."""
    for job, gpu_s in zip(jobs, meter.seconds, strict=True):
        job.gpu_s, job.render = gpu_s, render_token()
