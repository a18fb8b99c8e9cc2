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
    load_with_variant,
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


def render(
    pipelines: Pipelines, spec: JobSpec, image: Image.Image | None, on_step: StepCallback
) -> list[Artifact]:
    params = spec.params
    kwargs: dict[str, Any] = {
        "prompt": params.prompt,
        "negative_prompt": params.negative_prompt,
        "num_inference_steps": params.num_inference_steps,
        "guidance_scale": params.guidance_scale,
        "generator": generator(params.seed),
        "callback_on_step_end": step_end(on_step),
    }
    if spec.task == Task.I2I:
        if image is None:
            raise ValueError("an image-to-image job needs its input image")
        kwargs["image"] = image.convert("RGB").resize((params.width, params.height), Image.LANCZOS)
        kwargs["strength"] = params.strength
    else:
        kwargs["width"], kwargs["height"] = params.width, params.height
    with torch.inference_mode():
        images: list[Image.Image] = pipelines[spec.task](**kwargs).images
    return [Artifact(image=im) for im in images]
