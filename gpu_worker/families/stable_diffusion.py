"""Stable Diffusion 1.x/2.x: text-to-image, and image-to-image on the same weights."""

from __future__ import annotations

from typing import Any

import torch
from diffusers import DiffusionPipeline, StableDiffusionImg2ImgPipeline, StableDiffusionPipeline
from PIL import Image

from common.catalog import ModelRoute
from common.schemas import JobSpec, Task
from gpu_worker.families import (
    Artifact,
    Pipelines,
    StepCallback,
    generator,
    input_image,
    load_with_variant,
    one_at_a_time,
    step_end,
)


def load(
    route: ModelRoute, dtype: torch.dtype, device: torch.device
) -> dict[Task, DiffusionPipeline]:
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
    params, task = specs[0].params, specs[0].task
    kwargs: dict[str, Any] = {
        "prompt": [spec.params.prompt for spec in specs],
        # "" is what the pipeline uses for a missing negative prompt.
        "negative_prompt": [spec.params.negative_prompt or "" for spec in specs],
        "num_inference_steps": params.num_inference_steps,
        "guidance_scale": params.guidance_scale,
        "generator": [generator(spec.params.seed) for spec in specs],
        "callback_on_step_end": step_end(on_step),
    }
    if task == Task.I2I:
        size = (params.width, params.height)
        kwargs["image"] = [input_image(image, size) for image in images]
        kwargs["strength"] = params.strength
    else:
        kwargs["width"], kwargs["height"] = params.width, params.height
    with torch.inference_mode():
        outputs: list[Image.Image] = pipelines[task](**kwargs).images
    return [[Artifact(image=im)] for im in outputs]


render = one_at_a_time(render_batch)
