"""Benchmark: what live previews cost a render, on the tiny checkpoints.

The same seeded jobs render through each family's production ``render`` on a render thread, as
the worker calls it, in three modes, interleaved run by run so that drift in the machine's load
hits each alike:

- ``off``: no previews (``preview: false``);
- ``on``: previews as served, at most one per 0.5 s, through the worker's ``JobPreviews`` (a copy
  of the latents in the step callback; latent2rgb, resize and JPEG on the previews thread;
  ``PreviewStore.publish`` into a real redis-server);
- ``every_step``: the same with no interval, one preview per step: the worst case.

The figure is each mode's median render time (to the last preview published), its overhead
against ``off``, and that overhead per preview published. ``--side`` renders images at that
size instead (video: the same width, two thirds as high), as at 1024² on a GPU, where a preview's
cost is mostly the copy of the latents to the host that the step waits for.

    uv run python -m bench.previews [--runs 7] [--device cpu] [--routes sd,...] [--side 1024]

Prints the figures and writes bench/results/previews.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from redis.asyncio import Redis

from common.catalog import demo_catalog
from common.keys import Keys
from common.previews import PreviewStore
from common.redis_server import RedisServer
from common.schemas import JobSpec, RenderParams, Task, utcnow
from gpu_worker.families import Pipelines, PreviewSink, family
from gpu_worker.previews import PREVIEW_MIN_INTERVAL_S, JobPreviews
from gpu_worker.tiny import make_all

RESULTS = Path(__file__).parent / "results" / "previews.json"
MODES = {"off": None, "on": PREVIEW_MIN_INTERVAL_S, "every_step": 0.0}
# Route -> the job it renders: long enough for a few previews at 0.5 s on a small CPU.
JOBS: dict[str, tuple[Task, dict[str, Any]]] = {
    "sd": (Task.T2I, {"width": 384, "height": 384, "num_inference_steps": 20}),
    "sdxl": (Task.T2I, {"width": 384, "height": 384, "num_inference_steps": 20}),
    "flux": (Task.T2I, {"width": 384, "height": 384, "num_inference_steps": 12}),
    "ltx": (
        Task.T2V,
        {"width": 384, "height": 256, "num_inference_steps": 8, "num_frames": 17, "fps": 24},
    ),
}


def spec(route: str, side: int | None = None) -> JobSpec:
    task, params = JOBS[route]
    if side is not None:
        height = side if task is Task.T2I else side * 2 // 3 // 32 * 32
        params = params | {"width": side, "height": height}
    return JobSpec(
        job_id=f"bench-{route}",
        model=route,
        task=task,
        params=RenderParams(prompt="a lighthouse at dusk", guidance_scale=3.0, seed=7, **params),
        created_at=utcnow(),
    )


async def one_render(
    pipelines: Pipelines,
    route_family: str,
    job: JobSpec,
    interval_s: float | None,
    store: PreviewStore,
    render_thread: ThreadPoolExecutor,
    preview_thread: ThreadPoolExecutor,
) -> tuple[float, int]:
    """Seconds from the call to its last preview published; previews published."""
    loop = asyncio.get_running_loop()
    previews = (
        None
        if interval_s is None
        else JobPreviews(store, job.job_id, preview_thread, min_interval_s=interval_s)
    )
    sink: PreviewSink | None = None
    if previews is not None:
        offer = previews.offer
        sink = lambda done, total, latents, preview: offer(done, total, latents, 0, preview)  # noqa: E731
    render = family(route_family).render
    began = time.perf_counter()
    await loop.run_in_executor(
        render_thread, render, pipelines, job, None, lambda done, total: None, sink
    )
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    if previews is not None:
        await previews.close()
    return time.perf_counter() - began, 0 if previews is None else previews.published


async def main(
    runs: int, device: torch.device, routes: list[str], side: int | None = None
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        models = make_all(Path(tmp) / "models")
        catalog = demo_catalog(Path(tmp) / "models")
        server = RedisServer(Path(tmp) / "redis")
        server.start()
        redis = Redis.from_url(server.url, decode_responses=True)
        store = PreviewStore(redis, Keys("bench:"))
        render_thread = ThreadPoolExecutor(1, thread_name_prefix="render")
        preview_thread = ThreadPoolExecutor(1, thread_name_prefix="previews")
        try:
            for route in routes:
                entry = catalog.routes[route]
                dtype = torch.float16 if device.type == "cuda" else torch.float32
                pipelines: Pipelines = family(entry.family).load(entry, dtype, device)
                for pipe in pipelines.values():
                    pipe.set_progress_bar_config(disable=True)
                job = spec(route, side)
                await one_render(  # warm-up
                    pipelines, entry.family, job, 0.0, store, render_thread, preview_thread
                )
                times: dict[str, list[float]] = {mode: [] for mode in MODES}
                counts: dict[str, list[int]] = {mode: [] for mode in MODES}
                for _ in range(runs):
                    for mode, interval_s in MODES.items():
                        took_s, published = await one_render(
                            pipelines,
                            entry.family,
                            job,
                            interval_s,
                            store,
                            render_thread,
                            preview_thread,
                        )
                        times[mode].append(took_s)
                        counts[mode].append(published)
                off = statistics.median(times["off"])
                results[route] = {
                    "job": job.params.model_dump(exclude_none=True),
                    "task": job.task.value,
                    **{
                        mode: {
                            "median_s": round(statistics.median(times[mode]), 4),
                            "min_s": round(min(times[mode]), 4),
                            "max_s": round(max(times[mode]), 4),
                            "overhead_pct": round(
                                100 * (statistics.median(times[mode]) - off) / off, 2
                            ),
                            "previews_median": statistics.median(counts[mode]),
                            "per_preview_ms": round(
                                1000
                                * (statistics.median(times[mode]) - off)
                                / statistics.median(counts[mode]),
                                2,
                            )
                            if statistics.median(counts[mode])
                            else None,
                        }
                        for mode in MODES
                    },
                }
                print(f"{route}: " + json.dumps(results[route], ensure_ascii=False))
                del pipelines
        finally:
            render_thread.shutdown()
            preview_thread.shutdown()
            await redis.aclose()
            server.stop(kill=True)
        del models
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--routes", default=",".join(JOBS))
    parser.add_argument("--side", type=int, help="render images at this size (e.g. 1024)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    device = torch.device(args.device)
    figures = asyncio.run(main(args.runs, device, args.routes.split(","), args.side))
    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
        },
        "runs": args.runs,
        "routes": figures,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {args.out}")
