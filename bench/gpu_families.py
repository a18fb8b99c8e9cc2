"""Benchmark 4: every family's production path on a GPU, in its production dtype and settings.

Each production route is loaded from the tiny random-weight checkpoints (``gpu_worker/tiny``)
through the worker's own loader (``ModelRegistry``: the family's ``load``, the route's GPU
settings, compilation, the warm-up), in the route's production dtype, on the device. Each task
the route serves then renders at the route's default size (video: a short clip at the default
frame size) through the family's ``render`` and the worker's ``encode``, as a job would: the
first job, then ``--renders`` more. Flux and SDXL run twice, with ``compile`` off (production)
and ``"regional"``.

The weights are tiny, so load times and memory are not the real models': what this shows is
whether each production path runs on CUDA (dtypes, compilation, attention, video encoding) and
what a first job costs against the next. A route or task that fails is recorded with its error
and the run goes on: finding those is the point.

    python3 -m bench.gpu_families [--device cuda] [--out bench/results/gpu_families.json]

``--device cpu --quick`` runs the same code at 64² and 2 steps: a smoke test of this script.
Writes after every measurement, so a run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from bench.device import free, machine, peak_gib, sync
from common.catalog import DEFAULT_STYLES, Catalog, ModelRoute, demo_catalog, production_catalog
from common.schemas import ImageToImageForm, JobSpec, RenderParams, Task
from gpu_worker.encoding import encode
from gpu_worker.families import family
from gpu_worker.registry import ModelRegistry
from gpu_worker.tiny import make_all

RESULTS_DIR = Path(__file__).parent / "results"
# A short clip: the frame rule is k * frame_multiple + 1.
CLIP_FRAMES = 25
QUICK_SIDE, QUICK_STEPS, QUICK_FRAMES = 64, 2, 9
COMPILE_VARIANTS = {"flux": ("off", "regional"), "sdxl": ("off", "regional")}


def routes(models_dir: Path, device: torch.device) -> dict[str, ModelRoute]:
    """The production routes on the tiny checkpoints: production dtype and GPU settings (float32
    on a CPU, as the worker loads there)."""
    production = production_catalog().routes
    demo = demo_catalog(models_dir).routes
    return {
        name: route.model_copy(
            update={
                "weights": demo[name].weights,
                "edit_weights": demo[name].edit_weights,
                "loras": [],  # no tiny LoRA: multi-angle renders with prompt instructions
                "dtype": route.dtype if device.type == "cuda" else "float32",
            }
        )
        for name, route in production.items()
    }


def job(route: ModelRoute, task: Task, i: int, quick: bool) -> tuple[JobSpec, Image.Image | None]:
    d = route.defaults
    side = (QUICK_SIDE, QUICK_SIDE) if quick else (d.width, d.height)
    video = task in (Task.T2V, Task.I2V)
    params = RenderParams(
        prompt=f"a lighthouse on a cliff at dusk, {i}",
        width=side[0],
        height=side[1],
        num_inference_steps=QUICK_STEPS if quick else d.num_inference_steps,
        guidance_scale=d.guidance_scale,
        seed=i,
        # The API's default for image-to-image, as the gateway fills it in.
        strength=ImageToImageForm.model_fields["strength"].default if task is Task.I2I else None,
        num_frames=(QUICK_FRAMES if quick else CLIP_FRAMES) if video else None,
        fps=d.fps if video else None,
        # Multi-angle: the route's views (the gateway's default), one in a quick run.
        angles=(route.default_angles[:1] if quick else route.default_angles) or None,
    )
    spec = JobSpec(
        job_id=f"smoke-{route.name}-{task.value}-{i}",
        model=route.name,
        task=task,
        params=params,
        created_at=datetime.now(UTC),
    )
    image = None
    if task in (Task.I2I, Task.I2V):
        noise = np.random.default_rng(i).integers(0, 256, (side[1], side[0], 3), np.uint8)
        image = Image.fromarray(noise)
    return spec, image


def timed_job(
    route: ModelRoute, pipelines: Any, task: Task, i: int, quick: bool, device: torch.device
) -> dict[str, Any]:
    spec, image = job(route, task, i, quick)
    render = family(route.family).render
    sync(device)
    began = time.perf_counter()
    artifacts = render(pipelines, spec, image, lambda done, total: None)
    sync(device)
    rendered = time.perf_counter()
    encoded = [encode(a) for a in artifacts]
    return {
        "render_s": round(rendered - began, 4),
        "encode_s": round(time.perf_counter() - rendered, 4),
        "outputs": [f"{e.content_type} {len(e.data)} B" for e in encoded],
    }


def smoke_route(
    route: ModelRoute, device: torch.device, renders: int, quick: bool, record: Any
) -> dict[str, Any]:
    figures: dict[str, Any] = {"dtype": route.dtype, "gpu": route.gpu.model_dump()}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    catalog = Catalog(routes={route.name: route}, styles=DEFAULT_STYLES, v1_route=route.name)
    began = time.perf_counter()
    registry = ModelRegistry(catalog, [route.name], device)
    registry.load_all()
    figures["load_and_warm_up_s"] = round(time.perf_counter() - began, 2)
    if route.name in registry.load_errors:
        figures["error"] = registry.load_errors[route.name]
        return figures
    pipelines = registry.pipelines(route.name)
    figures["peak_after_load_gib"] = peak_gib(device)
    for task in route.tasks:
        task_figures: dict[str, Any] = {}
        figures[task.value] = task_figures
        try:
            first = timed_job(route, pipelines, task, 0, quick, device)
            task_figures |= {"first_job": first}
            steady = [timed_job(route, pipelines, task, i, quick, device) for i in range(renders)]
            task_figures |= {
                "steady_render_s": round(statistics.median(s["render_s"] for s in steady), 4),
                "steady_encode_s": round(statistics.median(s["encode_s"] for s in steady), 4),
                "renders": renders,
                "peak_gib": peak_gib(device),
            }
        except Exception as exc:  # recorded, not raised: the other tasks and routes go on
            task_figures["error"] = f"{type(exc).__name__}: {exc}"[:2000]
            task_figures["traceback"] = traceback.format_exc()[-4000:]
        record(figures)
    del pipelines, registry
    free(device)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="64², 2 steps: a smoke test")
    parser.add_argument("--renders", type=int, default=3, help="jobs after the first, per task")
    parser.add_argument("--routes", help="comma-separated route names (default: all)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    device = torch.device(args.device)
    smoke = args.quick or device.type == "cpu"
    name = "gpu_families_cpu_smoke.json" if smoke else "gpu_families.json"
    out = args.out or RESULTS_DIR / name
    results: dict[str, Any] = {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(device),
        "settings": {"quick": args.quick, "renders": args.renders, "clip_frames": CLIP_FRAMES},
        "routes": {},
    }
    if smoke:
        results["_note"] = "CPU smoke run of bench/gpu_families.py: not GPU figures"

    def write() -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")

    with tempfile.TemporaryDirectory(prefix="darkroom-families-") as tmp:
        make_all(Path(tmp))
        chosen = routes(Path(tmp), device)
        if args.routes:
            chosen = {n: chosen[n] for n in args.routes.split(",")}
        for name, route in chosen.items():
            for compile_mode in COMPILE_VARIANTS.get(name, (route.gpu.compile,)):
                variant = route.model_copy(
                    update={"gpu": route.gpu.model_copy(update={"compile": compile_mode})}
                )
                key = f"{name} compile={compile_mode}"
                print(f"[{key}] loading", flush=True)

                def record(figures: dict[str, Any], key: str = key) -> None:
                    results["routes"][key] = figures
                    write()

                record(smoke_route(variant, device, args.renders, args.quick, record))
                print(f"[{key}] {json.dumps(results['routes'][key])[:400]}", flush=True)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
