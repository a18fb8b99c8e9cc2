"""Benchmark 1: what the serving stack adds to each job, measured against the raw pipeline.

Starts the whole stack on loopback as separate processes (redis-server, SeaweedFS S3, the gateway,
a status service, a worker and an uploader), then, on the tiny SD checkpoint at the smallest size:

- raw, batch 1: the pipeline call alone, in a loop, in this process (the same loader, the same
  weights, the same family code path as the worker);
- sequential: jobs one at a time through both seed APIs, each watched to completion over SSE on
  the status service; they render alone, so per-job overhead = end-to-end time - the raw batch-1
  call;
- saturated: N jobs at concurrency C; jobs/s, the worker's duty cycle (the share of wall time it
  spent inside pipeline calls, from its /metrics) and its mean batch;
- raw, at the served batch: once the stack is stopped, the raw loop again with batches of the
  saturated run's mean batch rounded (the worker's ``render_batch`` path), so served throughput is
  compared with a raw loop at the same batch size, not with one job per call.

The sequential jobs' own event logs (each event carries its Unix time) split the end-to-end
time into stages (see ``stages``), and the worker's pipeline seconds give the render's own time
inside the stack, which on a small CPU is slower than alone: the other processes share its cores.

    uv run python -m bench.stack_overhead [--jobs 200] [--concurrency 16] [--repeat 1]
    uv run python -m bench.stack_overhead --jobs 24 --concurrency 8 --sequential 10 \
        --out /tmp/smoke.json                                     # a smoke run, ~1 min

Prints the figures and writes bench/results/stack_overhead.json (every run, and the range of each
headline figure over the runs).
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
from gpu_worker.families import Pipelines, batch_family, family
from gpu_worker.progress import HANDED_OFF_MESSAGE
from gpu_worker.registry import ModelRegistry
from gpu_worker.tiny import make_all
from tests.support.s3_server import start_s3_server
from tests.support.stack import Stack, stack_env
from tests.support.waiting import wait_for

RESULTS = Path(__file__).parent / "results" / "stack_overhead.json"
# The smallest render the tiny SD checkpoint makes: what is left is the stack's own cost.
PARAMS: dict[str, Any] = {
    "width": 64,
    "height": 64,
    "num_inference_steps": 2,
    "guidance_scale": 7.5,
}
ROUTE = "sd"


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


def summary_ms(values_s: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(percentile(values_s, 50) * 1000, 2),
        "p99_ms": round(percentile(values_s, 99) * 1000, 2),
        "mean_ms": round(statistics.fmean(values_s) * 1000, 2),
    }


class RawLoop:
    """The pipeline alone, in this process: loaded (and warmed) exactly as the worker does, and
    called the way the worker calls it (``render`` for one job, ``render_batch`` for more)."""

    def __init__(self, models_file: Path, params: dict[str, Any] | None = None) -> None:
        from common.catalog import Catalog

        self._params = PARAMS if params is None else params
        registry = ModelRegistry(Catalog.load(models_file), [ROUTE], torch.device("cpu"))
        registry.load_all()
        self._pipelines: Pipelines = registry.pipelines(ROUTE)
        self._family = registry.routes[ROUTE].family
        self._made = 0

    def _specs(self, batch: int) -> list[JobSpec]:
        specs = []
        for _ in range(batch):
            i, self._made = self._made, self._made + 1
            params = RenderParams(prompt=f"raw {i}", seed=i, **self._params)
            specs.append(
                JobSpec(
                    job_id=f"raw-{i}",
                    model=ROUTE,
                    task=Task.T2I,
                    params=params,
                    created_at=datetime.now(UTC),
                )
            )
        return specs

    def _call(self, batch: int) -> float:
        specs = self._specs(batch)
        began = time.perf_counter()
        if batch == 1:
            family(self._family).render(self._pipelines, specs[0], None, lambda done, total: None)
        else:
            batcher = batch_family(self._family)
            assert batcher is not None, f"{self._family} cannot render batches"
            batcher.render_batch(self._pipelines, specs, [None] * batch, lambda done, total: None)
        return time.perf_counter() - began

    def run(self, batch: int, calls: int) -> list[float]:
        """Seconds per pipeline call of ``batch`` jobs, after one untimed call at that size."""
        self._call(batch)
        return [self._call(batch) for _ in range(calls)]


def raw_figures(batch: int, calls_s: list[float]) -> dict[str, Any]:
    return {
        "batch": batch,
        "calls": len(calls_s),
        "call": summary_ms(calls_s),
        # From the p50 call, as printed: one slow call on a shared machine does not move it.
        "jobs_per_s": round(batch / percentile(calls_s, 50), 2),
    }


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


async def stages(redis_url: str, timed: list[Timed]) -> tuple[dict[str, list[float]], int]:
    """Each job's end-to-end time cut at its logged events: where the overhead goes.

    submit: the POST; worker: submitted -> the worker's event after its hand-off (read, render,
    encode, blobs, the ``rendered`` entry); upload: -> "completed" (blob read, S3 PUT, the
    record); notify: -> the client has it. A job whose hand-off event never made its log (the
    uploader finished it first, and a terminal job takes no more events) is left out and counted.
    """
    redis = Redis.from_url(redis_url, decode_responses=True)
    store = JobStore(redis, Keys("bench:"), task_ttl_s=3600)
    out: dict[str, list[float]] = {name: [] for name in STAGES}
    missing = 0
    try:
        for job in timed:
            events = await store.events_after(job.job_id, 0)
            handed_off = next((e.ts for e in events if e.message == HANDED_OFF_MESSAGE), None)
            completed = next(e.ts for e in events if e.status == JobStatus.COMPLETED)
            if handed_off is None:
                missing += 1
                continue
            out["submit"].append(job.submit_s)
            out["worker"].append(handed_off - job.submitted)
            out["upload"].append(completed - handed_off)
            out["notify"].append(job.done - completed)
    finally:
        await redis.aclose()
    return out, missing


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
            # Every job renders: the result cache would answer a repeated seeded request.
            body = {"prompt": f"job {i}", "seed": i, "cache": False, **PARAMS}
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


async def drive(
    stack: Running, jobs: int, concurrency: int, sequential_jobs: int
) -> dict[str, Any]:
    driver, metrics = Driver(stack.gateway, stack.status), stack.metrics
    try:
        await driver.run(8, 1)  # connections, caches and the first-call costs out of the way
        before = worker_metrics(metrics)
        sequential, _ = await driver.run(sequential_jobs, 1)
        after = worker_metrics(metrics)
        render_s = (after["busy_s"] - before["busy_s"]) / len(sequential)
        saturated, wall_s = await driver.run(jobs, concurrency)
        done = worker_metrics(metrics)
    finally:
        await driver.aclose()
    cut, missing = await stages(stack.redis_url, sequential)
    return {
        "sequential": sequential,
        "stages": cut,
        "hand_off_event_missing": missing,
        "render_in_stack_s": render_s,
        "saturated": {
            "submit": [t.submit_s for t in saturated],
            "wall_s": wall_s,
            "busy_s": done["busy_s"] - after["busy_s"],
            "calls": done["calls"] - after["calls"],
            "jobs": done["jobs"] - after["jobs"],
        },
    }


def measure(
    raw: RawLoop, root: Path, models_file: Path, args: argparse.Namespace
) -> dict[str, Any]:
    """One run: raw at batch 1, the stack (sequential, then saturated), raw at the served batch.
    Both raw loops run while the stack is down, so neither shares the cores with it."""
    root.mkdir(parents=True, exist_ok=True)
    raw_1 = raw.run(1, args.sequential)
    stack = start_stack(root, models_file)
    try:
        runs = asyncio.run(drive(stack, args.jobs, args.concurrency, args.sequential))
    finally:
        stack.stop()
    sat = runs["saturated"]
    mean_batch = sat["jobs"] / sat["calls"]
    batch = max(1, round(mean_batch))
    raw_b = raw.run(batch, max(10, args.sequential // batch))

    raw_1_s = percentile(raw_1, 50)
    sequential = runs["sequential"]
    # Sequential jobs render alone: their overhead is measured against the raw batch-1 call.
    overhead = [t.total_s - raw_1_s for t in sequential]
    served = raw_figures(batch, raw_b)
    jobs_per_s = args.jobs / sat["wall_s"]
    return {
        "raw_batch_1": raw_figures(1, raw_1),
        "sequential": {
            "jobs": len(overhead),
            "end_to_end": summary_ms([t.total_s for t in sequential]),
            "overhead_per_job": summary_ms(overhead),
            "submit": summary_ms([t.submit_s for t in sequential]),
            # The worker's mean pipeline call in the stack, where the raw loop ran alone.
            "render_in_stack_mean_ms": round(runs["render_in_stack_s"] * 1000, 2),
            # Cut at the worker's event after its hand-off, not at the first 90 % event.
            "stages_p50_ms": {
                name: round(statistics.median(values) * 1000, 2)
                for name, values in runs["stages"].items()
                if values
            },
            "stages_jobs": len(runs["stages"]["worker"]),
            "hand_off_event_missing": runs["hand_off_event_missing"],
        },
        "saturated": {
            "jobs": args.jobs,
            "concurrency": args.concurrency,
            "jobs_per_s": round(jobs_per_s, 2),
            "submit": summary_ms(sat["submit"]),
            "duty_cycle": round(sat["busy_s"] / sat["wall_s"], 4),
            "mean_batch": round(mean_batch, 2),
            "pipeline_calls": int(sat["calls"]),
            "mean_call_ms": round(sat["busy_s"] / sat["calls"] * 1000, 2),
        },
        # The like-for-like reference for "saturated": the raw loop at its mean batch, rounded.
        "raw_at_served_batch": served,
        "served_vs_raw_at_batch": round(jobs_per_s / served["jobs_per_s"], 3),
    }


# The headline figures whose spread over the runs is reported: (name, path in a run).
RANGED = (
    ("overhead_p50_ms", ("sequential", "overhead_per_job", "p50_ms")),
    ("overhead_p99_ms", ("sequential", "overhead_per_job", "p99_ms")),
    ("end_to_end_p50_ms", ("sequential", "end_to_end", "p50_ms")),
    ("worker_stage_p50_ms", ("sequential", "stages_p50_ms", "worker")),
    ("upload_stage_p50_ms", ("sequential", "stages_p50_ms", "upload")),
    ("raw_batch_1_call_p50_ms", ("raw_batch_1", "call", "p50_ms")),
    ("saturated_jobs_per_s", ("saturated", "jobs_per_s")),
    ("saturated_mean_batch", ("saturated", "mean_batch")),
    ("raw_at_served_batch_jobs_per_s", ("raw_at_served_batch", "jobs_per_s")),
    ("served_vs_raw_at_batch", ("served_vs_raw_at_batch",)),
    ("duty_cycle", ("saturated", "duty_cycle")),
)


def ranges(runs: list[dict[str, Any]]) -> dict[str, list[float]]:
    out = {}
    for name, path in RANGED:
        values = []
        for run in runs:
            value: Any = run
            for key in path:
                value = value.get(key) if isinstance(value, dict) else None
            if value is not None:
                values.append(value)
        if values:
            out[name] = [min(values), max(values)]
    return out


def report(number: int, run: dict[str, Any]) -> None:
    raw_1, seq, sat, raw_b = (
        run["raw_batch_1"],
        run["sequential"],
        run["saturated"],
        run["raw_at_served_batch"],
    )
    print(f"--- run {number}")
    print(
        f"raw pipeline call, batch 1   p50 {raw_1['call']['p50_ms']} ms"
        f"  ({raw_1['jobs_per_s']} jobs/s)"
    )
    print(
        f"overhead per job             p50 {seq['overhead_per_job']['p50_ms']} ms"
        f"  p99 {seq['overhead_per_job']['p99_ms']} ms  (goal 5 / 20; vs raw batch 1)"
    )
    print(
        f"submit latency               p50 {seq['submit']['p50_ms']} ms"
        f"  p99 {seq['submit']['p99_ms']} ms"
    )
    print(f"render in the stack          mean {seq['render_in_stack_mean_ms']} ms")
    print(
        "stages (p50 ms)              "
        + ", ".join(f"{name} {ms}" for name, ms in seq["stages_p50_ms"].items())
        + f"  ({seq['stages_jobs']} jobs; {seq['hand_off_event_missing']} without a hand-off event)"
    )
    print(
        f"saturated (C={sat['concurrency']})              {sat['jobs_per_s']} jobs/s"
        f" at mean batch {sat['mean_batch']}, submit p50 {sat['submit']['p50_ms']} ms"
        f" p99 {sat['submit']['p99_ms']} ms"
    )
    print(
        f"raw loop at batch {raw_b['batch']:<2}          {raw_b['jobs_per_s']} jobs/s"
        f"  (call p50 {raw_b['call']['p50_ms']} ms; served call mean {sat['mean_call_ms']} ms)"
    )
    print(f"served / raw at batch {raw_b['batch']:<2}      {run['served_vs_raw_at_batch']:.1%}")
    print(f"worker duty cycle            {sat['duty_cycle']:.1%}  (goal 97%)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=200, help="saturated jobs per run")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument(
        "--sequential", type=int, default=None, help="sequential jobs (default max(50, jobs/4))"
    )
    parser.add_argument("--repeat", type=int, default=1, help="runs, each on a fresh stack")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the JSON goes")
    args = parser.parse_args()
    if args.sequential is None:
        args.sequential = max(50, args.jobs // 4)

    # A shared machine's figures are only as good as its quiet: the load goes into the results.
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    runs = []
    with tempfile.TemporaryDirectory(prefix="darkroom-bench-") as tmp:
        root = Path(tmp)
        make_all(root / "models")
        models_file = root / "models.toml"
        write_catalog(demo_catalog(root / "models"), models_file)
        raw = RawLoop(models_file)
        for number in range(1, args.repeat + 1):
            run = measure(raw, root / f"run-{number}", models_file, args)
            report(number, run)
            runs.append(run)

    figures: dict[str, Any] = {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "torch": torch.__version__,
            "device": "cpu",
            "load_avg_at_start": load_at_start,
            "load_avg_at_end": [round(x, 2) for x in os.getloadavg()],
        },
        "params": {
            "jobs": args.jobs,
            "concurrency": args.concurrency,
            "sequential": args.sequential,
            "repeat": args.repeat,
            "render": PARAMS,
        },
        "runs": runs,
        "ranges": ranges(runs),
        "goals": {"overhead_p50_ms": 5, "overhead_p99_ms": 20, "duty_cycle": 0.97},
    }
    if args.repeat > 1:
        print(f"--- ranges over {args.repeat} runs")
        for name, (low, high) in figures["ranges"].items():
            print(f"{name:<32} {low} .. {high}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
