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
    StepCallback,
    load_with_variant,
    one_at_a_time,
    render_images,
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
) -> list[list[Artifact]]:
    """Compatible jobs (same task, size, steps, guidance, strength) in one pipeline call, each
    with its own prompt and generator: a seed gives the same image batched or alone."""
    prompts = {
        "prompt": [spec.params.prompt for spec in specs],
        # "" is what the pipeline uses for a missing negative prompt.
        "negative_prompt": [spec.params.negative_prompt or "" for spec in specs],
    }
    return render_images(pipelines[specs[0].task], specs, images, on_step, prompts)


render = one_at_a_time(render_batch)
