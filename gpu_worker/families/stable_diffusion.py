"""Stable Diffusion 1.x/2.x: text-to-image, and image-to-image on the same weights."""

from __future__ import annotations

import torch
from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionPipeline
from PIL import Image

from common.catalog import ModelRoute
from common.schemas import JobSpec, Task
from gpu_worker.families import (
    Artifact,
    Pipeline,
    Pipelines,
    PreviewSink,
    StepCallback,
    load_with_variant,
    one_at_a_time,
    render_images,
    spatial_preview,
)
from gpu_worker.previews import LatentFormat

# Previews: SD 1.x's latent2rgb factors (ComfyUI, comfy/latent_formats.py, SD15), one row per
# latent channel, for the scaled latents the UNet denoises.
LATENT_FORMAT = LatentFormat(
    (
        (0.3512, 0.2297, 0.3227),
        (0.3250, 0.4974, 0.2350),
        (-0.2829, 0.1762, 0.2721),
        (-0.2120, -0.2616, -0.7177),
    )
)


def load(route: ModelRoute, dtype: torch.dtype, device: torch.device) -> dict[Task, Pipeline]:
    return load_with_variant(
        route,
        dtype,
        device,
        (Task.T2I, StableDiffusionPipeline),
        (Task.I2I, StableDiffusionImg2ImgPipeline),
    )


def render_batch(
    pipelines: Pipelines,
    specs: list[JobSpec],
    images: list[Image.Image | None],
    on_step: StepCallback,
    previews: PreviewSink | None = None,
) -> list[list[Artifact]]:
    """Compatible jobs (same task, size, steps, guidance, strength) in one pipeline call, each
    with its own prompt and generator: a seed gives the same image batched or alone."""
    prompts = {
        "prompt": [spec.params.prompt for spec in specs],
        # "" is what the pipeline uses for a missing negative prompt.
        "negative_prompt": [spec.params.negative_prompt or "" for spec in specs],
    }
    pipe = pipelines[specs[0].task]
    preview = spatial_preview(pipe, specs[0], LATENT_FORMAT) if previews else None
    return render_images(pipe, specs, images, on_step, prompts, previews, preview)


render = one_at_a_time(render_batch)
