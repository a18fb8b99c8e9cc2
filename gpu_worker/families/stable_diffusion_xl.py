"""Stable Diffusion XL: text-to-image, and image-to-image on the same weights.

SDXL conditions on two text encoders (their hidden states side by side, and the second one's
pooled projection) and on the image's size and crop, which the pipelines fill in from the
requested size.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline
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

# Previews: SDXL's latent2rgb factors and bias (ComfyUI, comfy/latent_formats.py, SDXL).
LATENT_FORMAT = LatentFormat(
    (
        (0.3651, 0.4232, 0.4341),
        (-0.2533, -0.0042, 0.1068),
        (0.1076, 0.1111, -0.0362),
        (-0.3165, -0.2492, -0.2188),
    ),
    bias=(0.1084, -0.0175, -0.0011),
)

# What ``encode_prompt`` returns, in order: the pipeline's keyword for each.
EMBEDDINGS = (
    "prompt_embeds",
    "negative_prompt_embeds",
    "pooled_prompt_embeds",
    "negative_pooled_prompt_embeds",
)


def load(route: ModelRoute, dtype: torch.dtype, device: torch.device) -> dict[Task, Pipeline]:
    return load_with_variant(
        route,
        dtype,
        device,
        (Task.T2I, StableDiffusionXLPipeline),
        (Task.I2I, StableDiffusionXLImg2ImgPipeline),
    )


def embeddings(pipe: Any, specs: list[JobSpec]) -> dict[str, torch.Tensor]:
    """Each job's prompt and negative prompt, encoded on their own and stacked.

    Without a negative prompt SDXL guides away from zeros (``force_zeros_for_empty_prompt``, as
    stabilityai's base model sets it), with one from its encoding; the pipeline does one or the
    other for a whole call, so jobs with and without are encoded here, one by one, to render in
    one call as they would alone.
    """
    # The pipelines' own rule for classifier-free guidance (no negatives without it).
    guided = specs[0].params.guidance_scale > 1
    with torch.inference_mode():
        encoded = [
            pipe.encode_prompt(
                spec.params.prompt,
                do_classifier_free_guidance=guided,
                negative_prompt=spec.params.negative_prompt or None,
            )
            for spec in specs
        ]
    return {
        name: torch.cat([tensors[i] for tensors in encoded])
        for i, name in enumerate(EMBEDDINGS)
        if encoded[0][i] is not None
    }


def render_batch(
    pipelines: Pipelines,
    specs: list[JobSpec],
    images: list[Image.Image | None],
    on_step: StepCallback,
    previews: PreviewSink | None = None,
) -> list[list[Artifact]]:
    """Compatible jobs (same task, size, steps, guidance, strength) in one pipeline call, each
    with its own prompt, negative prompt and generator: a seed gives the same image batched or
    alone."""
    pipe = pipelines[specs[0].task]
    preview = spatial_preview(pipe, specs[0], LATENT_FORMAT) if previews else None
    return render_images(pipe, specs, images, on_step, embeddings(pipe, specs), previews, preview)


render = one_at_a_time(render_batch)
