"""LTX-Video: text-to-video, and image-to-video on the same weights.

One checkpoint serves both tasks: `LTXImageToVideoPipeline` shares the `LTXPipeline`'s modules
(``from_pipe``), so image-to-video costs no extra memory.
"""

from __future__ import annotations

from typing import Any, Protocol, cast

import torch
from diffusers import LTXImageToVideoPipeline, LTXPipeline
from PIL import Image

from common.catalog import ModelRoute
from common.schemas import JobSpec, Task
from gpu_worker.families import (
    Artifact,
    Pipeline,
    Pipelines,
    PreviewSink,
    StepCallback,
    generator,
    input_image,
    load_with_variant,
    step_end,
)
from gpu_worker.previews import LatentFormat, LatentPreview, Layout, format_for

# LTX-Video 0.9.1+ VAEs denoise while decoding (``timestep_conditioning``); these are the values
# the diffusers documentation recommends for them. The 0.9.0 VAE ignores both.
DECODE_TIMESTEP = 0.05
DECODE_NOISE_SCALE = 0.025

# Previews: ComfyUI publishes a 128-row latent2rgb table for LTX-Video (comfy/latent_formats.py,
# LTXV), not copied here yet (it could not be checked against the source); until it is, every
# LTX checkpoint gets the fallback map (its first three latent channels).
LATENT_FORMAT: LatentFormat | None = None


class VideoPipeline(Pipeline, Protocol):
    """What ``render`` reads of an `LTXPipeline` or `LTXImageToVideoPipeline` besides the call."""

    vae: Any
    vae_temporal_compression_ratio: int
    vae_spatial_compression_ratio: int


def video_preview(pipe: VideoPipeline, spec: JobSpec) -> LatentPreview:
    """The first frame: latents are packed ``(batch, F · H/32 · W/32, C)``, frame-major."""
    ratio, params = pipe.vae_spatial_compression_ratio, spec.params
    layout = Layout("tokens", params.height // ratio, params.width // ratio)
    channels = int(pipe.vae.config.latent_channels)
    return LatentPreview(format_for(LATENT_FORMAT, channels), layout, params.width, params.height)


def load(route: ModelRoute, dtype: torch.dtype, device: torch.device) -> dict[Task, Pipeline]:
    return load_with_variant(
        route, dtype, device, (Task.T2V, LTXPipeline), (Task.I2V, LTXImageToVideoPipeline)
    )


def render(
    pipelines: Pipelines,
    spec: JobSpec,
    image: Image.Image | None,
    on_step: StepCallback,
    previews: PreviewSink | None = None,
) -> list[Artifact]:
    params = spec.params
    if params.num_frames is None or params.fps is None:
        raise ValueError("a video job needs num_frames and fps")
    # LTX's scheduler stretches its schedule to end at sigma 0.1 (``shift_terminal``); with one
    # step that divides 0 by 0 and the first step fails with an IndexError deep in the scheduler.
    if params.num_inference_steps < 2:
        raise ValueError("LTX-Video needs at least 2 inference steps")
    pipe = cast(VideoPipeline, pipelines[spec.task])
    # The pipeline checks the sides (multiples of 32) but silently rounds other frame counts
    # down to the VAE's 8k + 1: the caller would get fewer frames than it asked for.
    multiple = pipe.vae_temporal_compression_ratio
    if (params.num_frames - 1) % multiple:
        raise ValueError(f"LTX-Video renders {multiple}k + 1 frames, not {params.num_frames}")
    kwargs: dict[str, Any] = {
        "prompt": params.prompt,
        "negative_prompt": params.negative_prompt,
        "width": params.width,
        "height": params.height,
        "num_frames": params.num_frames,
        # Also scales the transformer's temporal position embedding: not just metadata.
        "frame_rate": params.fps,
        "num_inference_steps": params.num_inference_steps,
        "guidance_scale": params.guidance_scale,
        "generator": generator(params.seed),
        "callback_on_step_end": step_end(
            on_step, previews=previews, preview=video_preview(pipe, spec) if previews else None
        ),
        "output_type": "pil",
    }
    if pipe.vae.config.timestep_conditioning:
        kwargs["decode_timestep"] = DECODE_TIMESTEP
        kwargs["decode_noise_scale"] = DECODE_NOISE_SCALE
    if spec.task == Task.I2V:
        # The pipeline would resize too; doing it here makes the conditioning frame explicit and
        # drops an alpha channel (uploads may be RGBA PNGs).
        kwargs["image"] = input_image(image, (params.width, params.height))
    with torch.inference_mode():
        videos: list[list[Image.Image]] = pipe(**kwargs).frames
    return [Artifact(frames=list(video), fps=params.fps) for video in videos]
