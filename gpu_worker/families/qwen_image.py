"""Qwen-Image multi-angle: the same subject seen from several camera angles, one image per angle.

Image-to-image: each angle is an edit of the input image by Qwen-Image-Edit-2509
(`QwenImageEditPlusPipeline`, weights ``route.edit_weights``), told where to move the camera, with
the route's multi-angle LoRAs when it has any. Text-to-image: a base image from Qwen-Image
(``route.weights``) first, then the same edits of it. Progress covers every render of the job.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import QwenImageEditPlusPipeline, QwenImagePipeline
from PIL import Image

from common.catalog import ModelRoute
from common.schemas import JobSpec, RenderParams, Task
from gpu_worker.families import (
    Artifact,
    Pipeline,
    Pipelines,
    PreviewSink,
    StepCallback,
    apply_loras,
    generator,
    packed_preview,
    step_end,
)
from gpu_worker.previews import LatentFormat, LatentPreview

# Camera instructions for the common angle names. Chinese first, then English: the multi-angle
# LoRA for Qwen-Image-Edit-2509 (dx8152/Qwen-Edit-2509-Multiple-angles) was trained on the
# Chinese commands, and the English half still steers the edit model without the LoRA.
ANGLE_INSTRUCTIONS: dict[str, str] = {
    "front": "Turn the camera to a front view of the subject.",
    "left 45°": "将镜头向左旋转45度 Rotate the camera 45 degrees to the left.",
    "right 45°": "将镜头向右旋转45度 Rotate the camera 45 degrees to the right.",
    "left 90°": "将镜头向左旋转90度 Rotate the camera 90 degrees to the left.",
    "right 90°": "将镜头向右旋转90度 Rotate the camera 90 degrees to the right.",
    "back": "将镜头向左旋转180度 Rotate the camera 180 degrees to view the subject from behind.",
    "top-down": "将镜头转为俯视 Turn the camera to a top-down view.",
    "bird's-eye": "将相机转向鸟瞰视角 Turn the camera to a bird's-eye view.",
    "low angle": "将镜头转为仰视 Turn the camera to a low-angle view.",
    "worm's-eye": "将相机切换到仰视视角 Turn the camera to a worm's-eye view.",
    "close-up": "将镜头转为特写镜头 Turn the camera to a close-up.",
    "wide-angle": "将镜头转为广角镜头 Turn the camera to a wide-angle lens.",
}
ANGLE_FALLBACK = "View the subject from {angle}."

# Previews: Qwen-Image's VAE is Wan 2.1's, so are its latent2rgb factors and bias (ComfyUI,
# comfy/latent_formats.py, Wan21), for its 16 normalised latent channels.
LATENT_FORMAT = LatentFormat(
    (
        (-0.1299, -0.1692, 0.2932),
        (0.0671, 0.0406, 0.0442),
        (0.3568, 0.2548, 0.1747),
        (0.0372, 0.2344, 0.1420),
        (0.0313, 0.0189, -0.0328),
        (0.0296, -0.0956, -0.0665),
        (-0.3477, -0.4059, -0.2925),
        (0.0166, 0.1902, 0.1975),
        (-0.0412, 0.0267, -0.1364),
        (-0.1293, 0.0740, 0.1636),
        (0.0680, 0.3019, 0.1128),
        (0.0032, 0.0581, 0.0639),
        (-0.1251, 0.0927, 0.1699),
        (0.0060, -0.0633, 0.0005),
        (0.3477, 0.2275, 0.2950),
        (0.1984, 0.0913, 0.1861),
    ),
    bias=(-0.1835, -0.0868, -0.3360),
)


def _angle_key(angle: str) -> str:
    # "Left 45", "left 45 degrees", "top down", "Close up" -> the names above.
    key = " ".join(angle.lower().replace("-", " ").replace("_", " ").split())
    key = key.replace(" degrees", "°").replace(" deg", "°")
    if key[-1:].isdigit():
        key += "°"
    return key


_INSTRUCTIONS_BY_KEY = {_angle_key(name): text for name, text in ANGLE_INSTRUCTIONS.items()}


def angle_prompt(angle: str, prompt: str = "") -> str:
    """The edit instruction for one view: the camera move, then the user's prompt if any."""
    instruction = _INSTRUCTIONS_BY_KEY.get(_angle_key(angle), ANGLE_FALLBACK.format(angle=angle))
    return f"{instruction} {prompt.strip()}".strip()


def load(route: ModelRoute, dtype: torch.dtype, device: torch.device) -> dict[Task, Pipeline]:
    if not route.edit_weights:
        raise ValueError(f"route {route.name!r}: the qwen-image family needs edit_weights")
    # Every view is an edit, so both tasks need the edit pipeline.
    edit = QwenImageEditPlusPipeline.from_pretrained(route.edit_weights, dtype=dtype)
    # The route's LoRAs (the multi-angle one, a Lightning one...) are Qwen-Image-Edit LoRAs: they go
    # into the edit model's transformer only, which the text-to-image pipeline does not share.
    apply_loras(edit, route.loras)
    edit.to(device)
    pipelines: dict[Task, Pipeline] = {Task.I2I: edit}
    if Task.T2I in route.tasks:
        # Qwen-Image and Qwen-Image-Edit-2509 ship the same VAE and the same Qwen2.5-VL-7B text
        # encoder: reuse the edit model's (about 16 GB in bfloat16) instead of a second copy.
        # Each keeps its own transformer, and its own scheduler (they hold per-call state).
        pipelines[Task.T2I] = QwenImagePipeline.from_pretrained(
            route.weights,
            vae=edit.vae,
            text_encoder=edit.text_encoder,
            tokenizer=edit.tokenizer,
            dtype=dtype,
        ).to(device)
    return pipelines


def _guidance(params: RenderParams) -> dict[str, Any]:
    # Qwen-Image has true classifier-free guidance, on only with a negative prompt (" " will do);
    # its `guidance_scale` argument is for guidance-distilled variants and warns when set here.
    if params.guidance_scale > 1.0:
        return {
            "true_cfg_scale": params.guidance_scale,
            "negative_prompt": params.negative_prompt or " ",
        }
    return {"true_cfg_scale": 1.0}


def render(
    pipelines: Pipelines,
    spec: JobSpec,
    image: Image.Image | None,
    on_step: StepCallback,
    previews: PreviewSink | None = None,
) -> list[Artifact]:
    """Previews show the render under way: the base image, then each view in turn."""
    params = spec.params
    if not params.angles:
        raise ValueError("a multi-angle job needs at least one angle")
    if spec.task == Task.I2I and image is None:
        raise ValueError("an image-to-image job needs its input image")
    steps = params.num_inference_steps
    if steps < 2:
        # Qwen-Image's schedule ends stretched to sigma 0.02 (shift_terminal); from a single
        # sigma that stretch divides 0 by 0 and the image comes out black.
        raise ValueError("Qwen-Image needs at least 2 inference steps")
    renders = len(params.angles) + (1 if spec.task == Task.T2I else 0)
    total = steps * renders
    common: dict[str, Any] = {
        "width": params.width,
        "height": params.height,
        "num_inference_steps": steps,
        **_guidance(params),
    }
    done = 0

    def preview(task: Task) -> LatentPreview | None:
        return packed_preview(pipelines[task], spec, LATENT_FORMAT) if previews else None

    with torch.inference_mode():
        if spec.task == Task.T2I:
            source: Image.Image = pipelines[Task.T2I](
                prompt=params.prompt,
                generator=generator(params.seed),
                callback_on_step_end=step_end(
                    on_step, done, total, previews=previews, preview=preview(Task.T2I)
                ),
                **common,
            ).images[0]
            done += steps
        else:
            assert image is not None
            # The edit pipeline scales it itself (384x384 for the text encoder, 1024x1024 for the
            # VAE) keeping its aspect ratio; the view is rendered at the requested size. There is
            # no `strength`: every view is a full edit of the source.
            source = image.convert("RGB")
        views: list[Artifact] = []
        for index, angle in enumerate(params.angles):
            view: Image.Image = pipelines[Task.I2I](
                image=[source],
                prompt=angle_prompt(angle, params.prompt),
                # Its own seed per view: the same job seed reproduces every view, and the
                # views do not share their noise.
                generator=generator(params.seed + index),
                callback_on_step_end=step_end(
                    on_step, done, total, previews=previews, preview=preview(Task.I2I)
                ),
                **common,
            ).images[0]
            done += steps
            views.append(Artifact(image=view))
    return views
