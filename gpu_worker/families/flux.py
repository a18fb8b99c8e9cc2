"""FLUX.1 (dev/schnell): text-to-image, and image-to-image on the same weights.

FLUX.1-dev is guidance-distilled: ``guidance_scale`` is an input of the transformer (one pass
per step), not classifier-free guidance, so there is no negative prompt. The pipeline could
run "true CFG" (a second pass on ``negative_prompt`` when ``true_cfg_scale > 1``), but that
doubles the cost and needs a second scale the request does not carry, so ``negative_prompt``
is ignored here.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import FluxImg2ImgPipeline, FluxPipeline
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

# FluxPipeline refuses more than 512 T5 tokens (and defaults to 512).
MAX_SEQUENCE_LENGTH = 512


def load(route: ModelRoute, dtype: torch.dtype, device: torch.device) -> dict[Task, Pipeline]:
    return load_with_variant(
        route, dtype, device, (Task.T2I, FluxPipeline), (Task.I2I, FluxImg2ImgPipeline)
    )


def render_batch(
    pipelines: Pipelines,
    specs: list[JobSpec],
    images: list[Image.Image | None],
    on_step: StepCallback,
) -> list[list[Artifact]]:
    """Compatible jobs in one pipeline call, each with its own prompt and generator."""
    params, task = specs[0].params, specs[0].task
    pipe: Any = pipelines[task]  # a FluxPipeline or FluxImg2ImgPipeline
    inputs: dict[str, Any] = {
        "prompt": [spec.params.prompt for spec in specs],
        # T5 pads every prompt to this length and the transformer attends over all of it; a
        # checkpoint whose tokenizer is shorter (the tiny one) would otherwise be over-padded.
        "max_sequence_length": min(MAX_SEQUENCE_LENGTH, pipe.tokenizer_2.model_max_length),
        # Unlike Stable Diffusion's, Flux's image-to-image does not take its size from the input
        # image: without these it renders 1024x1024.
        "width": params.width,
        "height": params.height,
    }
    return render_images(pipe, specs, images, on_step, inputs)


render = one_at_a_time(render_batch)
