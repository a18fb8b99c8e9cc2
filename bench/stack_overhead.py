"""Benchmark 1: what the serving stack adds to each job, measured against the raw pipeline.

Starts the whole stack on loopback as separate processes (redis-server, SeaweedFS S3, the gateway,
a status service, a worker and an uploader), then, on the tiny SD checkpoint at the smallest size:

- raw: the pipeline call alone, in a loop, in this process (the same loader, the same weights);
- sequential: jobs one at a time through both seed APIs, each watched to completion over SSE on
  the status service; per-job overhead = end-to-end time - the raw time of one call;
- saturated: N jobs at concurrency C; jobs/s, and the worker's duty cycle (the share of wall
  time it spent inside pipeline calls, from its /metrics).

The sequential jobs' own event logs (each event carries its Unix time) split the end-to-end
time into stages (see ``stages``), and the worker's pipeline seconds give the render's own time
inside the stack, which on a small CPU is slower than alone: the other processes share its cores.

    uv run python -m bench.stack_overhead [--jobs 200] [--concurrency 16]

Prints the figures and writes bench/results/stack_overhead.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import torch
from httpx_sse import aconnect_sse
from redis.asyncio import Redis

from common.catalog import demo_catalog, write_catalog
from common.jobs import JobStore
from common.keys import Keys
from common.redis_server import RedisServer, free_port
from common.schemas import JobSpec, JobStatus, RenderParams, Task
from gpu_worker.families import family
from gpu_worker.progress import RENDER_END_PCT
from gpu_worker.registry import ModelRegistry
from gpu_worker.tiny import make_all
from tests.support.s3_server import start_s3_server
from tests.support.stack import Stack, stack_env
from tests.support.waiting import wait_for

RESULTS = Path(__file__).parent / "results" / "stack_overhead.json"
# The smallest render the tiny SD checkpoint makes: what is left is the stack's own cost.
PARAMS = {"width": 64, "height": 64, "num_inference_steps": 2, "guidance_scale": 7.5}


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


def summary_ms(values_s: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(percentile(values_s, 50) * 1000, 2),
        "p99_ms": round(percentile(values_s, 99) * 1000, 2),
        "mean_ms": round(statistics.fmean(values_s) * 1000, 2),
    }


def raw_loop(models_file: Path, jobs: int) -> list[float]:
    """Seconds per pipeline call, the pipeline loaded (and warmed) exactly as the worker does."""
    from common.catalog import Catalog

    registry = ModelRegistry(Catalog.load(models_file), ["sd"], torch.device("cpu"))
    registry.load_all()
    pipelines = registry.pipelines("sd")
    render = family("stable-diffusion").render
    times = []
    for i in range(jobs):
        spec = JobSpec(
            job_id=f"raw-{i}",
            model="sd",
            task=Task.T2I,
            params=RenderParams(prompt=f"raw {i}", seed=i, **PARAMS),
            created_at=datetime.now(UTC),
        )
        began = time.perf_counter()
        render(pipelines, spec, None, lambda done, total: None)
        times.append(time.perf_counter() - began)
    return times


@dataclass(frozen=True)
class Timed:
    """One job as the client saw it, in Unix seconds (comparable with the events' ``ts``)."""

    job_id: str
    began: float
    submitted: float
    done: float

    @property
    def submit_s(self) -> float:
        return self.submitted - self.began

    @property
    def total_s(self) -> float:
        return self.done - self.began


async def stages(redis_url: str, timed: list[Timed]) -> dict[str, list[float]]:
    """Each job's end-to-end time cut at its logged events: where the overhead goes.

    submit: the POST; worker: submitted -> the worker's "uploading" event (read, render, encode,
    blobs, the ``rendered`` entry); upload: -> "completed" (blob read, S3 PUT, the record);
    notify: -> the client has it.
    """
    redis = Redis.from_url(redis_url, decode_responses=True)
    store = JobStore(redis, Keys("bench:"), task_ttl_s=3600)
    out: dict[str, list[float]] = {name: [] for name in STAGES}
    try:
        for job in timed:
            events = await store.events_after(job.job_id, 0)
            handed_off = next(e.ts for e in events if e.progress == RENDER_END_PCT)
            completed = next(e.ts for e in events if e.status == JobStatus.COMPLETED)
            out["submit"].append(job.submit_s)
            out["worker"].append(handed_off - job.submitted)
            out["upload"].append(completed - handed_off)
            out["notify"].append(job.done - completed)
    finally:
        await redis.aclose()
    return out


STAGES = ("submit", "worker", "upload", "notify")


class Driver:
    """Submits through the gateway and watches each job to its end on the status service."""

    def __init__(self, gateway: str, status: str) -> None:
        limits = httpx.Limits(max_connections=1000, max_keepalive_connections=1000)
        self.gateway = httpx.AsyncClient(base_url=gateway, timeout=60, limits=limits)
        self.status = httpx.AsyncClient(base_url=status, timeout=60, limits=limits)

    async def aclose(self) -> None:
        await self.gateway.aclose()
        await self.status.aclose()

    async def one(self, i: int) -> Timed:
        """One job, submitted and watched to its end; even jobs use seed 1's API, odd ones
        seed 2's."""
        began = time.time()
        if i % 2 == 0:
            body = {"prompt": f"job {i}", **PARAMS}
            answer = await self.gateway.post("/api/sd/t2i", json=body)
            job_id = answer.raise_for_status().json()["session_id"]
            events = f"/api/{job_id}/events"
        else:
            body = {"prompt": f"job {i}", "seed": i, **PARAMS}
            answer = await self.gateway.post("/v1/generate", json=body)
            job_id = answer.raise_for_status().json()["job_id"]
            events = f"/v1/jobs/{job_id}/events"
        submitted = time.time()
        last: dict[str, Any] = {}
        async with aconnect_sse(self.status, "GET", events) as source:
            async for sse in source.aiter_sse():
                last = json.loads(sse.data)
        if last.get("status") != "completed":
            raise RuntimeError(f"job {i} ended {last}")
        return Timed(job_id, began, submitted, time.time())

    async def run(self, jobs: int, concurrency: int) -> tuple[list[Timed], float]:
        queue = iter(range(jobs))
        timed: list[Timed] = []

        async def client() -> None:
            for i in queue:
                timed.append(await self.one(i))

        began = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        return timed, time.perf_counter() - began


def worker_metrics(metrics_url: str) -> dict[str, float]:
    """The worker's pipeline seconds, pipeline calls and jobs in them, so far."""
    text = httpx.get(metrics_url, timeout=10).text
    names = {
        "darkroom_pipeline_seconds_total": "busy_s",
        "darkroom_batch_size_count": "calls",
        "darkroom_batch_size_sum": "jobs",
    }
    totals = dict.fromkeys(names.values(), 0.0)
    for line in text.splitlines():
        name = line.split("{", 1)[0]
        if name in names:
            totals[names[name]] += float(line.rsplit(" ", 1)[1])
    return totals


@dataclass(frozen=True)
class Running:
    """The stack's addresses, and how to stop it."""

    gateway: str
    status: str
    metrics: str
    redis_url: str
    stop: Callable[[], None]


def start_stack(root: Path, models_file: Path) -> Running:
    redis = RedisServer(root / "redis")
    redis.start()
    s3 = start_s3_server(root / "s3")
    port, status_port, health_port = free_port(), free_port(), free_port()
    env = stack_env(
        redis_url=redis.url,
        prefix="bench:",
        models_file=models_file,
        workdir=root,
        port=port,
        extra=s3.storage_env("bench"),
    )
    stack = Stack(name="bench", workdir=root, env=env, port=port)
    stack.start("worker", env={"DARKROOM_ROUTES": "sd", "DARKROOM_HEALTH_PORT": str(health_port)})
    stack.start("uploader")
    stack.start("gateway")
    stack.start("status", env={"DARKROOM_PORT": str(status_port)})
    status_url = f"http://127.0.0.1:{status_port}"
    wait_for(lambda: _up(status_url), timeout_s=60, what="the status service")

    def stop() -> None:
        stack.stop_all()
        s3.stop()
        redis.stop(kill=True)

    metrics_url = f"http://127.0.0.1:{health_port}/metrics"
    return Running(stack.base_url, status_url, metrics_url, redis.url, stop)


def _up(url: str) -> bool:
    try:
        return httpx.get(url + "/", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


async def drive(stack: Running, jobs: int, concurrency: int) -> dict[str, Any]:
    driver, metrics = Driver(stack.gateway, stack.status), stack.metrics
    try:
        await driver.run(8, 1)  # connections, caches and the first-call costs out of the way
        before = worker_metrics(metrics)
        sequential, _ = await driver.run(max(50, jobs // 4), 1)
        after = worker_metrics(metrics)
        render_s = (after["busy_s"] - before["busy_s"]) / len(sequential)
        saturated, wall_s = await driver.run(jobs, concurrency)
        done = worker_metrics(metrics)
    finally:
        await driver.aclose()
    return {
        "sequential": sequential,
        "stages": await stages(stack.redis_url, sequential),
        "render_in_stack_s": render_s,
        "saturated": {
            "submit": [t.submit_s for t in saturated],
            "wall_s": wall_s,
            "busy_s": done["busy_s"] - after["busy_s"],
            "mean_batch": (done["jobs"] - after["jobs"]) / (done["calls"] - after["calls"]),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="darkroom-bench-") as tmp:
        root = Path(tmp)
        make_all(root / "models")
        models_file = root / "models.toml"
        write_catalog(demo_catalog(root / "models"), models_file)
        raw = raw_loop(models_file, max(50, args.jobs // 4))
        stack = start_stack(root, models_file)
        try:
            runs = asyncio.run(drive(stack, args.jobs, args.concurrency))
        finally:
            stack.stop()

    raw_s = statistics.median(raw)
    sequential, saturated = runs["sequential"], runs["saturated"]
    overhead = [t.total_s - raw_s for t in sequential]
    figures = {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "torch": torch.__version__,
            "device": "cpu",
        },
        "params": {"jobs": args.jobs, "concurrency": args.concurrency, "render": PARAMS},
        "raw_pipeline_call": summary_ms(raw),
        "sequential": {
            "jobs": len(overhead),
            "end_to_end": summary_ms([t.total_s for t in sequential]),
            "overhead_per_job": summary_ms(overhead),
            "submit": summary_ms([t.submit_s for t in sequential]),
            # The worker's mean pipeline call in the stack, where the raw loop ran alone.
            "render_in_stack_mean_ms": round(runs["render_in_stack_s"] * 1000, 2),
            "stages_p50_ms": {
                name: round(statistics.median(values) * 1000, 2)
                for name, values in runs["stages"].items()
            },
        },
        "saturated": {
            "jobs": args.jobs,
            "concurrency": args.concurrency,
            "jobs_per_s": round(args.jobs / saturated["wall_s"], 2),
            "raw_jobs_per_s": round(1 / raw_s, 2),
            "submit": summary_ms(saturated["submit"]),
            "duty_cycle": round(saturated["busy_s"] / saturated["wall_s"], 4),
            "mean_batch": round(saturated["mean_batch"], 2),
        },
        "goals": {"overhead_p50_ms": 5, "overhead_p99_ms": 20, "duty_cycle": 0.97},
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(figures, indent=2) + "\n")
    seq, sat = figures["sequential"], figures["saturated"]
    print(f"raw pipeline call      p50 {figures['raw_pipeline_call']['p50_ms']} ms")
    print(
        f"overhead per job       p50 {seq['overhead_per_job']['p50_ms']} ms"
        f"  p99 {seq['overhead_per_job']['p99_ms']} ms  (goal 5 / 20)"
    )
    print(
        f"submit latency         p50 {seq['submit']['p50_ms']} ms  p99 {seq['submit']['p99_ms']} ms"
    )
    print(
        f"saturated (C={args.concurrency})       {sat['jobs_per_s']} jobs/s "
        f"(raw loop {sat['raw_jobs_per_s']}), submit p50 {sat['submit']['p50_ms']} ms "
        f"p99 {sat['submit']['p99_ms']} ms"
    )
    print(f"worker duty cycle      {sat['duty_cycle']:.1%}  (goal 97%)")
    print(f"mean batch (saturated) {sat['mean_batch']} jobs per pipeline call")
    print(f"render in the stack    mean {seq['render_in_stack_mean_ms']} ms")
    print(
        "stages (p50 ms)        "
        + ", ".join(f"{name} {ms}" for name, ms in seq["stages_p50_ms"].items())
    )
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
