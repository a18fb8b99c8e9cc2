"""``darkroom worker``: load the served pipelines, then consume jobs until told to stop."""

from __future__ import annotations

import os
import sys

import torch

from common.catalog import Catalog
from common.cpus import format_cpu_list, pin_process
from common.health import health_server
from common.jobs import JobStore
from common.keys import Keys
from common.lifecycle import stop_event_on_signals
from common.logging import get_logger
from common.redis import connect
from common.usage import UsageStore
from gpu_worker.pod_cost import pod_deletion_cost
from gpu_worker.registry import ModelRegistry, pick_device
from gpu_worker.settings import WorkerSettings
from gpu_worker.worker import Worker

log = get_logger(__name__)
# The exit status of a worker whose render thread was stuck.
EXIT_STALLED = 1


async def run(settings: WorkerSettings) -> None:
    stop = stop_event_on_signals()
    if settings.render_cpus:
        # The whole process, before any model: the render thread, the operator threads torch
        # starts from it and the loop that feeds it all inherit the cores (common/cpus.py).
        try:
            pin_process(os.getpid(), settings.render_cpus)
        except ValueError as exc:
            sys.exit(f"darkroom: invalid settings: DARKROOM_RENDER_CPUS: {exc}")
    threads = settings.torch_threads or len(settings.render_cpus)
    if threads:
        torch.set_num_threads(threads)
    log.info(
        "worker.torch",
        threads=torch.get_num_threads(),
        render_cpus=format_cpu_list(settings.render_cpus) or None,
    )
    budget_mb = settings.model_memory_budget_mb
    registry = ModelRegistry(
        Catalog.load(settings.models_file),
        settings.routes,
        pick_device(settings.device),
        memory_budget_bytes=None if budget_mb is None else budget_mb * 1024 * 1024,
    )
    keys = Keys(settings.key_prefix)
    redis, blobs = connect(settings), connect(settings, decode=False)
    worker = Worker(
        redis=redis,
        blobs=blobs,
        keys=keys,
        jobs=JobStore(
            redis,
            keys,
            task_ttl_s=settings.task_ttl_s,
            usage_retention_days=settings.usage_retention_days,
            priority_aging_s=settings.priority_aging_s,
        ),
        priority_aging_s=settings.priority_aging_s,
        usage=UsageStore(redis, keys, retention_days=settings.usage_retention_days),
        registry=registry,
        consumer_name=settings.consumer_name,
        blob_ttl_s=settings.blob_ttl_s,
        block_ms=settings.block_ms,
        claim_idle_ms=settings.claim_idle_ms,
        drain_grace_s=settings.drain_grace_s,
        preload=settings.preload,
        hang_at_step=settings.test_hang_at_step,
        step_delay_s=settings.test_step_delay_s,
    )
    try:
        async with (
            health_server(settings.health_port, worker.readiness, worker.liveness, worker.serving),
            pod_deletion_cost(settings, worker.work_in_hand, worker.work_changed),
        ):
            await worker.run(stop)
    finally:
        await redis.aclose()
        await blobs.aclose()
    if worker.stalled is not None:
        # The render thread is still inside its call, and a normal exit waits for every thread.
        log.error("worker.exit", reason=worker.stalled, status=EXIT_STALLED)
        sys.stderr.flush()
        os._exit(EXIT_STALLED)
