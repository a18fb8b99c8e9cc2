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
    PreviewSink,
    StepCallback,
    load_with_variant,
    one_at_a_time,
    packed_preview,
    render_images,
)
from gpu_worker.previews import LatentFormat

# FluxPipeline refuses more than 512 T5 tokens (and defaults to 512).
MAX_SEQUENCE_LENGTH = 512

# Previews: FLUX.1's latent2rgb factors and bias (ComfyUI, comfy/latent_formats.py, Flux), for
# its 16 latent channels as the transformer sees them (shifted and scaled).
LATENT_FORMAT = LatentFormat(
    (
        (-0.0346, 0.0244, 0.0681),
        (0.0034, 0.0210, 0.0687),
        (0.0275, -0.0668, -0.0433),
        (-0.0174, 0.0160, 0.0617),
        (0.0859, 0.0721, 0.0329),
        (0.0004, 0.0383, 0.0115),
        (0.0405, 0.0861, 0.0915),
        (-0.0236, -0.0185, -0.0259),
        (-0.0245, 0.0250, 0.1180),
        (0.1008, 0.0755, -0.0421),
        (-0.0515, 0.0201, 0.0011),
        (0.0428, -0.0012, -0.0036),
        (0.0817, 0.0765, 0.0749),
        (-0.1264, -0.0522, -0.1103),
        (-0.0280, -0.0881, -0.0499),
        (-0.1262, -0.0982, -0.0778),
    ),
    bias=(-0.0329, -0.0718, -0.0851),
)


def load(route: ModelRoute, dtype: torch.dtype, device: torch.device) -> dict[Task, Pipeline]:
    return load_with_variant(
        route, dtype, device, (Task.T2I, FluxPipeline), (Task.I2I, FluxImg2ImgPipeline)
    )


def render_batch(
    pipelines: Pipelines,
    specs: list[JobSpec],
    images: list[Image.Image | None],
    on_step: StepCallback,
    previews: PreviewSink | None = None,
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
    preview = packed_preview(pipe, specs[0], LATENT_FORMAT) if previews else None
    return render_images(pipe, specs, images, on_step, inputs, previews, preview)


render = one_at_a_time(render_batch)
