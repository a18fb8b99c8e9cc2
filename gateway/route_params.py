"""What a model route accepts of a request: its size, step and frame limits, its views, its
defaults for a video, and the seed chosen for a request that names none."""

from __future__ import annotations

import secrets

from common.catalog import ModelRoute
from common.schemas import MAX_SEED, ImageToVideoForm, RenderParams, TextToVideoRequest
from gateway.errors import field_error


def resolve_seed(seed: int | None) -> int:
    """Chosen here, not on the worker, so the record shows it at once and a retry renders the
    same."""
    return secrets.randbelow(MAX_SEED + 1) if seed is None else seed


def route_angles(
    route: ModelRoute, angles: list[str] | None, status_code: int = 422
) -> list[str] | None:
    """The views to render: those asked for, else the route's own; none on a single-view route,
    which refuses any (with ``status_code``: the OpenAI API answers 400)."""
    if not route.default_angles:
        if angles is not None:
            raise field_error("angles", f"model {route.name!r} renders a single view", status_code)
        return None
    return angles or route.default_angles


def video_params(
    route: ModelRoute,
    request: TextToVideoRequest | ImageToVideoForm,
    width: int | None,
    height: int | None,
) -> RenderParams:
    """A video request's parameters, the route's defaults where it names none."""
    defaults = route.defaults
    return RenderParams(
        prompt=request.prompt,
        negative_prompt=request.negative_prompt,
        width=width or defaults.width,
        height=height or defaults.height,
        num_inference_steps=request.num_inference_steps or defaults.num_inference_steps,
        guidance_scale=(
            defaults.guidance_scale if request.guidance_scale is None else request.guidance_scale
        ),
        seed=resolve_seed(request.seed),
        num_frames=request.num_frames or defaults.num_frames,
        fps=request.fps or defaults.fps,
    )


def check_route_limits(route: ModelRoute, params: RenderParams) -> None:
    """A 422 naming the field when the size, steps or frames are past what the route renders."""
    for name, value, limit in (
        ("width", params.width, route.max_width),
        ("height", params.height, route.max_height),
    ):
        if value > limit:
            raise field_error(name, f"{value} is larger than model {route.name!r} allows ({limit})")
        if value % route.size_multiple:
            raise field_error(name, f"{value} is not a multiple of {route.size_multiple}")
    if params.num_inference_steps < route.min_steps:
        raise field_error(
            "num_inference_steps",
            f"model {route.name!r} needs at least {route.min_steps} steps",
        )
    if params.num_inference_steps > route.max_steps:
        raise field_error(
            "num_inference_steps",
            f"{params.num_inference_steps} is more than "
            f"model {route.name!r} allows ({route.max_steps})",
        )
    if params.num_frames is not None:
        if params.num_frames > route.max_frames:
            raise field_error(
                "num_frames",
                f"{params.num_frames} is more than model {route.name!r} allows "
                f"({route.max_frames})",
            )
        if (params.num_frames - 1) % route.frame_multiple:
            raise field_error(
                "num_frames",
                f"{params.num_frames} frames: model {route.name!r} renders "
                f"k × {route.frame_multiple} + 1 frames (e.g. {route.frame_multiple + 1})",
            )
