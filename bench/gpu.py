"""Benchmark 3: full-size architectures on a GPU, raw pipeline loop against the whole stack.

Each model is built with random weights directly on the device, from configs written below
(speed does not depend on weight values, and nothing is downloaded): SD1.5 at 512² 30 steps,
SDXL at 1024² 30 steps, a FLUX.1-dev-sized transformer at 1024² 28 steps. The pipeline is saved
with ``save_pretrained`` and loaded back by the worker's own loader (``ModelRegistry``: GPU
settings applied, warm-up run), then:

- raw: the family's ``render`` in a loop in this process (and ``render_batch`` at the route's
  ``max_batch``, for the batching gain of SD1.5 and SDXL, the routes that batch);
- served: the same folder behind redis-server, the gateway, one worker and the uploader (local
  storage); N jobs at concurrency C through ``POST /api/<route>/t2i``, each watched to its end on
  the gateway's SSE; jobs/s over the wall time, the served/raw ratio, and the worker's duty cycle
  from its /metrics.

One call per model, each under 10 minutes on an H100 (weights kept with ``--workdir`` are reused):

    uv run python -m bench.gpu --model sd15
    uv run python -m bench.gpu --model sdxl
    uv run python -m bench.gpu --model flux

Merges its figures into bench/results/gpu.json, keyed by model, after each stage (a run cut
short keeps its raw figures), and prints them as a table; ``--no-served`` stops after the raw
loop. bench/gpu_window.sh runs these calls in order on a GPU machine without network.
``--device cpu --tiny`` runs the same code on tiny shapes, as a smoke test of this script; it
writes bench/results/gpu_cpu_smoke.json instead (not GPU figures).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, cast

import httpx
import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from httpx_sse import aconnect_sse
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
)

import tests.support.stack as stack_support
from bench.device import free, machine, peak_gib, sync
from common.catalog import (
    DEFAULT_STYLES,
    Catalog,
    GpuSettings,
    ModelRoute,
    RouteDefaults,
    production_catalog,
    write_catalog,
)
from common.redis_server import RedisServer, free_port
from common.schemas import JobSpec, RenderParams, Task
from gpu_worker.families import MODULES, Pipeline, family
from gpu_worker.optimize import optimize
from gpu_worker.registry import DTYPES, ModelRegistry, warm_up
from gpu_worker.tiny import clip as tiny_clip
from gpu_worker.tiny import flux as tiny_flux
from tests.support.stack import Stack, stack_env

RESULTS_DIR = Path(__file__).parent / "results"
GOALS = {"served_over_raw": 0.97, "batching_gain": 1.5, "duty_cycle": 0.97}
# Loading a 24 GB checkpoint and warming it up can outlast the stack helper's default wait.
WORKER_READY_TIMEOUT_S = 480.0


# -- architectures ------------------------------------------------------------------------------


@contextlib.contextmanager
def building(device: torch.device, dtype: torch.dtype) -> Iterator[None]:
    """Parameters created on ``device`` in ``dtype``: a 12B transformer never exists in float32
    or on the host."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with device:
            yield
    finally:
        torch.set_default_dtype(previous)


def on_host(scheduler_cls: type[Any], **config: Any) -> Any:
    """A scheduler built as ``from_pretrained`` builds it: float32 tables on the host, whatever
    ``building`` set."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    try:
        with torch.device("cpu"):
            return scheduler_cls(**config)
    finally:
        torch.set_default_dtype(previous)


class BuiltPipeline(Pipeline, Protocol):
    """A pipeline built here: what the worker uses, and saving. diffusers' classes are placeholders
    to a type checker (see ``gpu_worker.families.Pipeline``), hence the casts below."""

    def save_pretrained(self, save_directory: str | os.PathLike[str]) -> None: ...


def clip_text(
    tokenizer: CLIPTokenizer, tiny: bool, *, big_g: bool = False
) -> CLIPTextModel | CLIPTextModelWithProjection:
    """CLIP ViT-L/14's text tower (SD1.5, SDXL's first, FLUX), or OpenCLIP bigG's (SDXL's second,
    with its projection). The local tokenizer's ids all fall inside the full vocabulary."""
    shape: dict[str, Any]
    if tiny:
        shape = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1}
        shape |= {"num_attention_heads": 2, "projection_dim": 32}
    elif big_g:
        shape = {"hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32}
        shape |= {"num_attention_heads": 20, "projection_dim": 1280, "hidden_act": "gelu"}
    else:
        shape = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12}
        shape |= {"num_attention_heads": 12, "projection_dim": 768, "hidden_act": "quick_gelu"}
    config = CLIPTextConfig(
        vocab_size=len(tokenizer) if tiny else 49408,
        max_position_embeddings=tiny_clip.MAX_TOKENS,
        # The pooled output is read at the first EOS: the ids must be the tokenizer's.
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **shape,
    )
    return CLIPTextModelWithProjection(config) if big_g else CLIPTextModel(config)


def vae(tiny: bool, **config: Any) -> AutoencoderKL:
    """The SD/SDXL/FLUX autoencoder: four blocks (scale factor 8) of 128-512 channels."""
    return AutoencoderKL(
        block_out_channels=(32, 32, 32, 32) if tiny else (128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1 if tiny else 2,
        **config,
    )


def build_sd15(tiny: bool) -> BuiltPipeline:
    tokenizer = tiny_clip.tokenizer()
    unet = UNet2DConditionModel(
        sample_size=64,
        block_out_channels=(32, 32, 64, 64) if tiny else (320, 640, 1280, 1280),
        layers_per_block=1 if tiny else 2,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=32 if tiny else 768,
        attention_head_dim=2 if tiny else 8,  # heads, despite the name (diffusers #2011)
    )
    pipe = StableDiffusionPipeline(
        vae=vae(tiny, latent_channels=4, sample_size=512, scaling_factor=0.18215),
        text_encoder=clip_text(tokenizer, tiny),
        tokenizer=tokenizer,
        unet=unet,
        # DDIM: one UNet call per step (SD1.5's PNDM adds one), so 30 steps are 30 UNet calls.
        scheduler=on_host(
            DDIMScheduler,
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            clip_sample=False,
            set_alpha_to_one=False,
            steps_offset=1,
        ),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    return cast(BuiltPipeline, pipe)


def build_sdxl(tiny: bool) -> BuiltPipeline:
    tokenizer, tokenizer_2 = tiny_clip.tokenizer(), tiny_clip.tokenizer()
    text_encoder = clip_text(tokenizer, tiny)
    text_encoder_2 = clip_text(tokenizer_2, tiny, big_g=True)
    time_dim = 8 if tiny else 256
    projection_dim = text_encoder_2.config.projection_dim
    assert projection_dim is not None  # clip_text sets it
    unet = UNet2DConditionModel(
        sample_size=128,
        block_out_channels=(32, 64, 64) if tiny else (320, 640, 1280),
        layers_per_block=1 if tiny else 2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 1, 1) if tiny else (1, 2, 10),
        attention_head_dim=(1, 2, 2) if tiny else (5, 10, 20),
        # Both towers' hidden states, concatenated: 768 + 1280.
        cross_attention_dim=text_encoder.config.hidden_size + text_encoder_2.config.hidden_size,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_dim,
        # Six size/crop time embeddings and bigG's pooled projection: 6 * 256 + 1280 = 2816.
        projection_class_embeddings_input_dim=6 * time_dim + projection_dim,
    )
    pipe = StableDiffusionXLPipeline(
        # As stabilityai/stable-diffusion-xl-base-1.0: the VAE decodes in float32.
        vae=vae(
            tiny, latent_channels=4, sample_size=1024, scaling_factor=0.13025, force_upcast=True
        ),
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=on_host(
            EulerDiscreteScheduler,
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            steps_offset=1,
            timestep_spacing="leading",
        ),
        add_watermarker=False,
    )
    return cast(BuiltPipeline, pipe)


def build_flux(tiny: bool) -> BuiltPipeline:
    tokenizer, tokenizer_2 = tiny_clip.tokenizer(), tiny_flux.t5_tokenizer()
    t5 = T5Config(
        vocab_size=len(tokenizer_2) if tiny else 32128,
        d_model=32 if tiny else 4096,
        d_kv=16 if tiny else 64,
        d_ff=64 if tiny else 10240,
        # T5-XXL has 24 layers; the encoder runs once per job, so two stand in for its cost.
        num_layers=1 if tiny else 2,
        num_heads=2 if tiny else 64,
        feed_forward_proj="gated-gelu",
        pad_token_id=tokenizer_2.pad_token_id,
        eos_token_id=tokenizer_2.eos_token_id,
    )
    if tiny:
        transformer = FluxTransformer2DModel(
            num_layers=1,
            num_single_layers=1,
            attention_head_dim=32,
            num_attention_heads=2,
            joint_attention_dim=32,
            pooled_projection_dim=32,
            guidance_embeds=True,
            axes_dims_rope=(8, 12, 12),
        )
    else:  # the defaults are FLUX.1's: 19 double and 38 single blocks, 24 heads of 128
        transformer = FluxTransformer2DModel(guidance_embeds=True)
    pipe = FluxPipeline(
        scheduler=on_host(
            FlowMatchEulerDiscreteScheduler,
            shift=3.0,
            use_dynamic_shifting=True,
            base_shift=0.5,
            max_shift=1.15,
            base_image_seq_len=256,
            max_image_seq_len=4096,
        ),
        vae=vae(
            tiny,
            latent_channels=16,
            sample_size=1024,
            scaling_factor=0.3611,
            shift_factor=0.1159,
            use_quant_conv=False,
            use_post_quant_conv=False,
        ),
        text_encoder=clip_text(tokenizer, tiny),
        tokenizer=tokenizer,
        text_encoder_2=T5EncoderModel(t5),
        tokenizer_2=tokenizer_2,
        transformer=transformer,
    )
    return cast(BuiltPipeline, pipe)


@dataclass(frozen=True)
class Model:
    name: str
    family: str  # the Darkroom family that serves it; may be one the project lacks
    build: Callable[[bool], BuiltPipeline]
    dtype: str
    side: int
    steps: int
    guidance_scale: float
    gpu: GpuSettings
    raw_jobs: int  # batch-1 calls in the raw loop
    served_jobs: int
    size_multiple: int = 8


PRODUCTION = production_catalog().routes
MODELS = {
    "sd15": Model(
        "sd15", "stable-diffusion", build_sd15, "float16", 512, 30, 7.5,
        PRODUCTION["sd"].gpu, raw_jobs=16, served_jobs=96,
    ),
    "sdxl": Model(
        "sdxl", "stable-diffusion-xl", build_sdxl, "float16", 1024, 30, 5.0,
        PRODUCTION["sdxl"].gpu, raw_jobs=8, served_jobs=16,
    ),
    "flux": Model(
        "flux", "flux", build_flux, "bfloat16", 1024, 28, 3.5,
        PRODUCTION["flux"].gpu, raw_jobs=4, served_jobs=6, size_multiple=16,
    ),
}  # fmt: skip
TINY_SIDE, TINY_STEPS = 64, 2


def route_for(model: Model, weights: Path, gpu: GpuSettings, tiny: bool) -> ModelRoute:
    side, steps = (TINY_SIDE, TINY_STEPS) if tiny else (model.side, model.steps)
    return ModelRoute(
        name=model.name,
        # A model no family serves is rendered through the SD family's calls (raw loop only).
        family=model.family if model.family in MODULES else "stable-diffusion",  # type: ignore[arg-type]
        weights=str(weights),
        tasks=[Task.T2I],
        dtype=model.dtype,  # type: ignore[arg-type]
        size_multiple=model.size_multiple,
        # The warm-up renders at the defaults: the benchmark's own size, so nothing is first.
        defaults=RouteDefaults(
            width=side, height=side, num_inference_steps=steps, guidance_scale=model.guidance_scale
        ),
        gpu=gpu,
    )


def denoiser_params(pipe: Pipeline) -> int:
    module = pipe.components.get("unet") or pipe.components["transformer"]
    return sum(p.numel() for p in module.parameters())


def build_and_save(
    model: Model, out: Path, device: torch.device, tiny: bool
) -> tuple[BuiltPipeline, dict[str, float]]:
    dtype = DTYPES[model.dtype] if device.type != "cpu" else torch.float32
    began = time.perf_counter()
    with torch.random.fork_rng(devices=[]), building(device, dtype):
        torch.manual_seed(0)
        pipe = model.build(tiny)
    pipe.set_progress_bar_config(disable=True)
    sync(device)
    built = time.perf_counter()
    timings = {"build_s": round(built - began, 2)}
    if model.family in MODULES and not (out / "model_index.json").exists():
        pipe.save_pretrained(out)
        timings["save_s"] = round(time.perf_counter() - built, 2)
    return pipe, timings


# -- raw loop -----------------------------------------------------------------------------------


def spec(route: ModelRoute, i: int) -> JobSpec:
    d = route.defaults
    params = RenderParams(
        prompt=f"a lighthouse on a cliff at dusk, raw {i}",
        width=d.width,
        height=d.height,
        num_inference_steps=d.num_inference_steps,
        guidance_scale=d.guidance_scale,
        seed=i,
    )
    return JobSpec(
        job_id=f"raw-{i}", model=route.name, task=Task.T2I, params=params,
        created_at=datetime.now(UTC),
    )  # fmt: skip


def timed_calls(device: torch.device, calls: int, call: Callable[[int], object]) -> list[float]:
    times = []
    for i in range(calls):
        sync(device)
        began = time.perf_counter()
        call(i)
        sync(device)
        times.append(time.perf_counter() - began)
    return times


def raw_loop(
    pipelines: dict[Task, Pipeline],
    route: ModelRoute,
    device: torch.device,
    jobs: int,
    batch_calls: int,
) -> dict[str, Any]:
    """Batch-1 calls of the family's ``render``; then, if the route batches, ``render_batch``
    calls at its ``max_batch`` with as many jobs in all."""
    fam = family(route.family)
    noop: Callable[[int, int], None] = lambda done, total: None  # noqa: E731
    single = timed_calls(device, jobs, lambda i: fam.render(pipelines, spec(route, i), None, noop))
    figures: dict[str, Any] = {"batch_1": throughput(single, 1)}
    size = route.gpu.max_batch
    if size > 1:
        batched = timed_calls(
            device,
            batch_calls,
            lambda i: fam.render_batch(  # type: ignore[attr-defined]
                pipelines, [spec(route, i * size + j) for j in range(size)], [None] * size, noop
            ),
        )
        figures[f"batch_{size}"] = throughput(batched, size)
        figures["batching_gain"] = round(
            figures[f"batch_{size}"]["jobs_per_s"] / figures["batch_1"]["jobs_per_s"], 3
        )
    figures["at_max_batch"] = figures[f"batch_{size}"]
    if device.type == "cuda":
        figures["peak_memory_gib"] = peak_gib(device)
    return figures


def throughput(call_s: list[float], jobs_per_call: int) -> dict[str, float]:
    return {
        "calls": len(call_s),
        "jobs_per_call": jobs_per_call,
        "call_p50_s": round(statistics.median(call_s), 4),
        "jobs_per_s": round(len(call_s) * jobs_per_call / sum(call_s), 4),
    }


# -- served -------------------------------------------------------------------------------------


class Driver:
    """Submits through the gateway and follows each job to its end on the gateway's SSE."""

    def __init__(self, gateway: str, route: ModelRoute) -> None:
        limits = httpx.Limits(max_connections=500, max_keepalive_connections=500)
        self.client = httpx.AsyncClient(base_url=gateway, timeout=600, limits=limits)
        self.route = route

    async def one(self, i: int) -> None:
        d = self.route.defaults
        body = {
            "prompt": f"a lighthouse on a cliff at dusk, served {i}",
            "width": d.width,
            "height": d.height,
            "num_inference_steps": d.num_inference_steps,
            "guidance_scale": d.guidance_scale,
            "seed": i,
            "cache": False,  # every job renders: this measures the device, not the cache
        }
        answer = await self.client.post(f"/api/{self.route.name}/t2i", json=body)
        session = answer.raise_for_status().json()["session_id"]
        last: dict[str, Any] = {}
        async with aconnect_sse(self.client, "GET", f"/api/{session}/events") as source:
            async for sse in source.aiter_sse():
                last = json.loads(sse.data)
        if last.get("status") != "completed":
            raise RuntimeError(f"job {i} ended {last}")

    async def run(self, jobs: range, concurrency: int) -> float:
        """Seconds from the first submit to the last completion, ``concurrency`` clients each
        submitting its next job as soon as its last one completed."""
        queue = iter(jobs)

        async def client() -> None:
            for i in queue:
                await self.one(i)

        began = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        return time.perf_counter() - began


def worker_metrics(url: str) -> dict[str, float]:
    """Sums of the worker's pipeline-seconds counter and batch-size histogram."""
    totals = {"darkroom_pipeline_seconds_total": 0.0}
    totals |= {"darkroom_batch_size_sum": 0.0, "darkroom_batch_size_count": 0.0}
    for line in httpx.get(url, timeout=10).text.splitlines():
        name = line.split("{", 1)[0]
        if name in totals:
            totals[name] += float(line.rsplit(" ", 1)[1])
    return totals


async def drive(
    gateway: str, metrics: str, route: ModelRoute, jobs: int, concurrency: int
) -> dict[str, Any]:
    driver = Driver(gateway, route)
    try:
        # Connections, the first submit and the first finish out of the way.
        await driver.run(range(10_000, 10_000 + route.gpu.max_batch), route.gpu.max_batch)
        before = worker_metrics(metrics)
        wall_s = await driver.run(range(jobs), concurrency)
        after = worker_metrics(metrics)
    finally:
        await driver.client.aclose()
    busy_s = after["darkroom_pipeline_seconds_total"] - before["darkroom_pipeline_seconds_total"]
    calls = after["darkroom_batch_size_count"] - before["darkroom_batch_size_count"]
    batched = after["darkroom_batch_size_sum"] - before["darkroom_batch_size_sum"]
    return {
        "jobs": jobs,
        "concurrency": concurrency,
        "wall_s": round(wall_s, 3),
        "jobs_per_s": round(jobs / wall_s, 4),
        "pipeline_s": round(busy_s, 3),
        "duty_cycle": round(busy_s / wall_s, 4),
        "mean_batch": round(batched / calls, 2) if calls else None,
    }


def served(
    root: Path, models_file: Path, route: ModelRoute, device: torch.device, jobs: int, conc: int
) -> dict[str, Any]:
    redis = RedisServer(root / "redis")
    redis.start()
    port, health_port = free_port(), free_port()
    env = stack_env(
        redis_url=redis.url,
        prefix="bench:",
        models_file=models_file,
        workdir=root,
        port=port,
        extra={"DARKROOM_DEVICE": device.type, "DARKROOM_STORAGE": "local"},
    )
    stack = Stack(name="bench", workdir=root, env=env, port=port)
    stack_support.READY_TIMEOUT_S = WORKER_READY_TIMEOUT_S
    try:
        began = time.perf_counter()
        stack.start(
            "worker", env={"DARKROOM_ROUTES": route.name, "DARKROOM_HEALTH_PORT": str(health_port)}
        )
        worker_ready_s = time.perf_counter() - began
        stack.start("uploader")
        stack.start("gateway")
        figures = asyncio.run(
            drive(stack.base_url, f"http://127.0.0.1:{health_port}/metrics", route, jobs, conc)
        )
        return {"worker_ready_s": round(worker_ready_s, 2), **figures}
    finally:
        stack.stop_all()
        redis.stop(kill=True)


# -- main ---------------------------------------------------------------------------------------


def log(message: str, began: float) -> None:
    print(f"[{time.perf_counter() - began:7.1f}s] {message}", flush=True)


def run(
    args: argparse.Namespace, workdir: Path, record: Callable[[dict[str, Any]], object]
) -> dict[str, Any]:
    """The model's figures; ``record`` gets them as they stand after each stage, so a run cut
    short still leaves what it measured."""
    began = time.perf_counter()
    device = torch.device(args.device)
    model = MODELS[args.model]
    gpu = model.gpu.model_copy(
        update={
            k: v
            for k, v in (("compile", args.compile), ("attention_backend", args.attention_backend))
            if v is not None
        }
    )
    weights = workdir / (f"tiny-{model.name}" if args.tiny else model.name)
    route = route_for(model, weights, gpu, args.tiny)
    raw_jobs = args.raw_jobs or (2 if args.tiny else model.raw_jobs)
    served_jobs = args.jobs or (2 * gpu.max_batch if args.tiny else model.served_jobs)
    concurrency = args.concurrency or (3 * gpu.max_batch if gpu.max_batch > 1 else 3)
    dtype = model.dtype if device.type != "cpu" else "float32"  # as the registry loads it
    log(f"building {model.name} on {device} ({dtype})", began)
    pipe, timings = build_and_save(model, weights, device, args.tiny)
    params = denoiser_params(pipe)
    log(f"built a {params / 1e9:.3g}B-parameter denoiser: {timings}", began)

    def figures(raw: dict[str, Any], served_figures: dict[str, Any] | str) -> dict[str, Any]:
        return {
            "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": machine(device),
            "settings": {
                "tiny": args.tiny,
                "dtype": dtype,
                "width": route.defaults.width,
                "height": route.defaults.height,
                "num_inference_steps": route.defaults.num_inference_steps,
                "guidance_scale": route.defaults.guidance_scale,
                "denoiser_params": params,
                "gpu": gpu.model_dump(),
            },
            "timings_s": timings,
            "raw": raw,
            "served": served_figures,
            "goals": GOALS,
            "elapsed_s": round(time.perf_counter() - began, 1),
        }

    served_figures: dict[str, Any] | str
    if model.family in MODULES:
        del pipe
        free(device)
        catalog = Catalog(routes={route.name: route}, styles=DEFAULT_STYLES, v1_route=route.name)
        models_file = workdir / f"{model.name}.toml"
        write_catalog(catalog, models_file)
        loaded = time.perf_counter()
        registry = ModelRegistry(catalog, [route.name], device)
        registry.load_all()  # the worker's loader: GPU settings and warm-up included
        timings["load_and_warm_up_s"] = round(time.perf_counter() - loaded, 2)
        log(f"loaded through ModelRegistry in {timings['load_and_warm_up_s']} s", began)
        raw = raw_loop(registry.pipelines(route.name), route, device, raw_jobs, args.batch_calls)
        del registry
        free(device)
        log(f"raw loop: {raw['at_max_batch']['jobs_per_s']} jobs/s", began)
        if not args.served:
            return figures(raw, "not run (--no-served)")
        record(figures(raw, "not measured yet: the run ended during the served stage"))
        served_figures = served(workdir, models_file, route, device, served_jobs, concurrency)
        served_figures["served_over_raw"] = round(
            served_figures["jobs_per_s"] / raw["at_max_batch"]["jobs_per_s"], 4
        )
        if gpu.max_batch > 1:  # against single calls too: the served batches may be partial
            served_figures["served_over_raw_batch_1"] = round(
                served_figures["jobs_per_s"] / raw["batch_1"]["jobs_per_s"], 4
            )
        log(f"served: {served_figures['jobs_per_s']} jobs/s", began)
    else:
        # No family serves this architecture: the raw loop on the pipeline just built, with the
        # route's GPU settings and the registry's warm-up, through the SD family's render.
        pipelines: dict[Task, Pipeline] = {Task.T2I: pipe}
        optimize(pipelines, gpu)
        warmed = time.perf_counter()
        warm_up(route, pipelines)
        timings["warm_up_s"] = round(time.perf_counter() - warmed, 2)
        raw = raw_loop(pipelines, route, device, raw_jobs, args.batch_calls)
        del pipe, pipelines
        free(device)
        log(f"raw loop: {raw['at_max_batch']['jobs_per_s']} jobs/s", began)
        served_figures = f"not available: no {model.family} family in gpu_worker/families"

    return figures(raw, served_figures)


def table(results: dict[str, Any]) -> str:
    rows = [
        ("model", "size/steps", "raw j/s", "served j/s", "ratio", "batch gain", "duty", "device")
    ]
    for name, r in results.items():
        s, raw, srv = r["settings"], r["raw"], r["served"]
        ok = isinstance(srv, dict)
        rows.append(
            (
                name,
                f"{s['width']}²/{s['num_inference_steps']}",
                f"{raw['at_max_batch']['jobs_per_s']:.3f} (b{s['gpu']['max_batch']})",
                f"{srv['jobs_per_s']:.3f}" if ok else "n/a",
                f"{srv['served_over_raw']:.3f}" if ok else "n/a",
                f"{raw['batching_gain']:.2f}x" if "batching_gain" in raw else "-",
                f"{srv['duty_cycle']:.1%}" if ok else "n/a",
                r["machine"].get("gpu", r["machine"]["device"]),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    goals = GOALS
    lines.append(
        f"goals: ratio >= {goals['served_over_raw']}, SD1.5 batching gain >= "
        f"{goals['batching_gain']}x, duty cycle >= {goals['duty_cycle']:.0%}"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=sorted(MODELS), required=True)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes: a smoke test")
    parser.add_argument("--jobs", type=int, help="served jobs (default per model)")
    parser.add_argument("--raw-jobs", type=int, help="batch-1 raw calls (default per model)")
    parser.add_argument("--batch-calls", type=int, default=4, help="raw max_batch calls")
    parser.add_argument("--concurrency", type=int, help="default 3 x max_batch, at least 3")
    parser.add_argument("--compile", choices=["off", "regional", "full"])
    parser.add_argument("--attention-backend")
    parser.add_argument("--workdir", type=Path, help="keep the weights here (reused if present)")
    parser.add_argument("--out", type=Path, help="results file (merged, keyed by model)")
    parser.add_argument(
        "--no-served", dest="served", action="store_false", help="the raw loop alone"
    )
    args = parser.parse_args()

    # A time limit's SIGTERM unwinds like Ctrl+C: the stack's processes (sessions of their own)
    # are stopped on the way out, not left holding the GPU.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    smoke = args.tiny or args.device == "cpu"
    out = args.out or RESULTS_DIR / ("gpu_cpu_smoke.json" if smoke else "gpu.json")

    def record(figures: dict[str, Any]) -> dict[str, Any]:
        results = json.loads(out.read_text()) if out.exists() else {}
        if smoke:
            results["_note"] = "CPU smoke run of bench/gpu.py on tiny shapes: not GPU figures"
        results[args.model] = figures
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
        return results

    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
        figures = run(args, args.workdir, record)
    else:
        workdir = Path(tempfile.mkdtemp(prefix="darkroom-gpu-bench-"))
        try:
            figures = run(args, workdir, record)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    results = record(figures)
    print(json.dumps({args.model: figures}, indent=2, ensure_ascii=False))
    print(table({k: v for k, v in results.items() if not k.startswith("_")}))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
