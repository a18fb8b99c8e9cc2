"""Benchmark: what the scheduler gives each class and tenant under saturation, on one worker.

Starts redis-server, a gateway (auth on: each tenant is an API key), one worker (route ``sd``,
the tiny checkpoint at 64×64, 2 steps) and an uploader with local storage, then, each phase
on an empty queue:

- ``classes``: one burst of jobs of mixed classes (20 % high, 50 % normal, 30 % low) from four
  tenants; queue wait (queued → the worker's first ``processing`` event) p50/p99 per class;
- ``heavy_light``: one tenant queues a backlog (200), then three light tenants one job each;
  each light job's wait, against what FIFO would have given it: the time the worker took to
  render the heavy backlog queued before it (measured in the same run);
- ``fairness``: four tenants queue equal backlogs at once; Jain's index of the jobs each
  started in the window while all four had jobs waiting (1.0 = equal shares, 0.25 = one tenant
  alone);
- ``cache``: seeded requests with the cache on, each rendered once, then sent again: the
  repeat's latency from the POST to its ``completed`` event.

Every job but the cache phase's sends ``cache: false``. Waits come from the jobs' own event
logs (Unix times), so polling does not blur them.

    uv run python -m bench.scheduling [--mixed 120] [--backlog 200] [--per-tenant 50] \
        [--phases classes,heavy_light,fairness,cache]

Prints the figures and writes bench/results/scheduling.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from redis.asyncio import Redis

from common.catalog import demo_catalog, write_catalog
from common.jobs import JobStore
from common.keys import Keys
from common.redis_server import RedisServer, free_port
from common.schemas import JobStatus
from gpu_worker.tiny import make_all
from tests.support.keys import create_key
from tests.support.stack import Stack, stack_env

RESULTS = Path(__file__).parent / "results" / "scheduling.json"
BODY: dict[str, Any] = {"prompt": "p", "width": 64, "height": 64, "num_inference_steps": 2}
PREFIX = "bench:"
SUBMIT_CONCURRENCY = 8


def percentile(values: Sequence[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


def jain(shares: Sequence[float]) -> float:
    """Jain's fairness index: (Σx)² / (n Σx²)."""
    total, squares = sum(shares), sum(x * x for x in shares)
    return total * total / (len(shares) * squares) if squares else 1.0


class Bench:
    def __init__(self, stack: Stack, redis: Redis) -> None:
        self.stack = stack
        self.redis = redis
        self.store = JobStore(redis, Keys(PREFIX), task_ttl_s=3600)
        self.keys: dict[str, str] = {}

    def client(self, tenant: str) -> httpx.AsyncClient:
        if tenant not in self.keys:
            self.keys[tenant] = create_key(self.stack, tenant, options=("--max-priority", "high"))
        return httpx.AsyncClient(
            base_url=self.stack.base_url,
            timeout=60,
            headers={"Authorization": f"Bearer {self.keys[tenant]}"},
        )

    async def submit(
        self, tenant: str, bodies: Sequence[dict[str, Any]], *, concurrency: int = 1
    ) -> list[str]:
        """Job ids in the order of ``bodies``; sent ``concurrency`` at a time."""
        gate = asyncio.Semaphore(concurrency)
        async with self.client(tenant) as http:

            async def one(body: dict[str, Any]) -> str:
                async with gate:
                    response = await http.post("/api/sd/t2i", json={**BODY, **body})
                response.raise_for_status()
                return str(response.json()["session_id"])

            return list(await asyncio.gather(*(one(body) for body in bodies)))

    async def wait_done(self, job_ids: Sequence[str], timeout_s: float = 1800) -> None:
        deadline = time.monotonic() + timeout_s
        pending = list(job_ids)
        while pending:
            async with self.redis.pipeline(transaction=False) as pipe:
                for job_id in pending:
                    pipe.hget(Keys(PREFIX).job(job_id), "status")
                statuses = await pipe.execute()
            pending = [
                job_id
                for job_id, status in zip(pending, statuses, strict=True)
                if not JobStatus(status).terminal
            ]
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(pending)} jobs unfinished")
            await asyncio.sleep(0.2)

    async def times(self, job_id: str) -> tuple[float, float, float]:
        """(queued, started, completed) in Unix seconds, from the record and the event log."""
        queued = float(await self.redis.hget(Keys(PREFIX).job(job_id), "queued_at") or 0)
        events = await self.store.events_after(job_id, 0)
        started = next(e.ts for e in events if e.status == JobStatus.PROCESSING)
        completed = next(e.ts for e in events if e.status == JobStatus.COMPLETED)
        return queued or events[0].ts, started, completed


async def classes_phase(bench: Bench, jobs: int) -> dict[str, Any]:
    tenants = ("c0", "c1", "c2", "c3")
    mix = ["high"] * 2 + ["normal"] * 5 + ["low"] * 3
    plan = [(tenants[i % 4], mix[i % 10]) for i in range(jobs)]
    ids_by_tenant = await asyncio.gather(
        *(
            bench.submit(
                tenant,
                [
                    {"seed": i, "cache": False, "priority": p}
                    for i, (t, p) in enumerate(plan)
                    if t == tenant
                ],
                concurrency=2,
            )
            for tenant in tenants
        )
    )
    classes = {
        job_id: p
        for tenant, ids in zip(tenants, ids_by_tenant, strict=True)
        for job_id, p in zip(ids, [p for t, p in plan if t == tenant], strict=True)
    }
    await bench.wait_done(list(classes))
    waits: dict[str, list[float]] = {"high": [], "normal": [], "low": []}
    for job_id, priority in classes.items():
        queued, started, _ = await bench.times(job_id)
        waits[priority].append(started - queued)
    return {
        "jobs": jobs,
        "queue_wait_s": {
            p: {
                "count": len(w),
                "p50": round(percentile(w, 50), 3),
                "p99": round(percentile(w, 99), 3),
            }
            for p, w in waits.items()
        },
    }


async def heavy_light_phase(bench: Bench, backlog: int) -> dict[str, Any]:
    heavy = await bench.submit(
        "heavy",
        [{"seed": i, "cache": False} for i in range(backlog)],
        concurrency=SUBMIT_CONCURRENCY,
    )
    lights = []
    for n in range(3):
        lights += await bench.submit(f"light{n}", [{"seed": 10_000 + n, "cache": False}])
    await bench.wait_done([*heavy, *lights])
    light_waits = []
    for job_id in lights:
        queued, started, _ = await bench.times(job_id)
        light_waits.append(started - queued)
    heavy_times = [await bench.times(job_id) for job_id in heavy]
    # FIFO: a light job queued after the backlog starts once the backlog queued before it ends.
    first_light_queued = (await bench.times(lights[0]))[0]
    fifo_wait = max(c for q, _, c in heavy_times if q < first_light_queued) - first_light_queued
    return {
        "heavy_backlog": backlog,
        "light_first_job_wait_s": [round(w, 3) for w in light_waits],
        "fifo_wait_s": round(fifo_wait, 3),
    }


async def fairness_phase(bench: Bench, per_tenant: int) -> dict[str, Any]:
    tenants = ("f0", "f1", "f2", "f3")
    plans = [
        [{"seed": 20_000 + 1000 * n + i, "cache": False} for i in range(per_tenant)]
        for n in range(len(tenants))
    ]
    submitted = await asyncio.gather(
        *(bench.submit(t, plan, concurrency=2) for t, plan in zip(tenants, plans, strict=True))
    )
    ids = dict(zip(tenants, submitted, strict=True))
    await bench.wait_done([job for jobs in ids.values() for job in jobs])
    times = {t: [await bench.times(job) for job in jobs] for t, jobs in ids.items()}
    # The window: from when all four have jobs queued to when the first tenant's last job
    # starts; all along every tenant had jobs waiting, so equal shares are the fair outcome.
    begin = max(min(q for q, _, _ in ts) for ts in times.values())
    end = min(max(s for _, s, _ in ts) for ts in times.values())
    shares = [sum(begin <= s <= end for _, s, _ in times[t]) for t in tenants]
    return {
        "per_tenant": per_tenant,
        "window_s": round(end - begin, 3),
        "started_in_window": dict(zip(tenants, shares, strict=True)),
        "jain_index": round(jain(shares), 4),
    }


async def cache_phase(bench: Bench, repeats: int) -> dict[str, Any]:
    firsts = await bench.submit("cache", [{"seed": 30_000 + i} for i in range(repeats)])
    await bench.wait_done(firsts)
    latencies, hits = [], 0
    for i in range(repeats):
        began = time.time()
        (job_id,) = await bench.submit("cache", [{"seed": 30_000 + i}])
        await bench.wait_done([job_id])
        events = await bench.store.events_after(job_id, 0)
        done = next(e for e in events if e.status == JobStatus.COMPLETED)
        hits += done.message == "Served from cache"
        latencies.append(done.ts - began)
    return {
        "repeats": repeats,
        "hits": hits,
        "hit_latency_ms": {
            "p50": round(percentile(latencies, 50) * 1000, 2),
            "max": round(max(latencies) * 1000, 2),
        },
    }


async def run(stack: Stack, args: argparse.Namespace) -> dict[str, Any]:
    redis = Redis.from_url(stack.env["REDIS_URL"], decode_responses=True)
    bench = Bench(stack, redis)
    try:
        # One untimed job: the worker's first call warms the pipeline.
        await bench.wait_done(await bench.submit("warm", [{"seed": 1, "cache": False}]))
        out: dict[str, Any] = {}
        phases = {
            "classes": lambda: classes_phase(bench, args.mixed),
            "heavy_light": lambda: heavy_light_phase(bench, args.backlog),
            "fairness": lambda: fairness_phase(bench, args.per_tenant),
            "cache": lambda: cache_phase(bench, args.cache_repeats),
        }
        for name in args.phases.split(","):
            began = time.monotonic()
            out[name] = await phases[name]()
            out[name]["wall_s"] = round(time.monotonic() - began, 1)
        return out
    finally:
        await redis.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mixed", type=int, default=120, help="jobs in the classes phase")
    parser.add_argument("--backlog", type=int, default=200, help="the heavy tenant's backlog")
    parser.add_argument("--per-tenant", type=int, default=50, help="fairness phase, per tenant")
    parser.add_argument("--cache-repeats", type=int, default=10)
    parser.add_argument(
        "--phases",
        default="classes,heavy_light,fairness,cache",
        help="which phases; others keep their figures from the existing --out file",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="darkroom-bench-sched-") as tmp:
        root = Path(tmp)
        make_all(root / "models")
        models_file = root / "models.yaml"
        write_catalog(demo_catalog(root / "models"), models_file)
        redis = RedisServer(root / "redis")
        redis.start()
        port = free_port()
        env = stack_env(
            redis_url=redis.url,
            prefix=PREFIX,
            models_file=models_file,
            workdir=root,
            port=port,
            extra={
                "DARKROOM_AUTH": "keys",
                "DARKROOM_ROUTES": "sd",
                "DARKROOM_KEY_DEFAULT_RATE_PER_MIN": "none",
                "DARKROOM_KEY_DEFAULT_MAX_QUEUED": "none",
            },
        )
        stack = Stack(name="bench", workdir=root, env=env, port=port)
        try:
            stack.start("worker", "uploader", "gateway")
            figures = asyncio.run(run(stack, args))
        finally:
            stack.stop_all()
            redis.stop(kill=True)
    earlier = json.loads(args.out.read_text()) if args.out.exists() else {}
    when = datetime.now(UTC).isoformat(timespec="seconds")
    for figure in figures.values():
        figure["when"] = when
    result = {
        **earlier,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "setup": "one worker, route sd (tiny random weights), 64x64, 2 steps, CPU",
        **figures,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
