"""What a job costs, in one unit shared by quotas (``--max-cost``) and usage accounting.

The unit is the megapixel-step: width × height × denoising steps × frames × renders / 10⁶. It
follows what the device does (every step of every render denoises every pixel of every frame),
it is known before anything is queued, and it needs no measurement. A 512² image in 50 steps
costs 13.1; an 8-angle qwen job at 1024² in 40 steps, with its base image, 377.5.
"""

from __future__ import annotations

from common.schemas import RenderParams, Task

COST_UNIT = "megapixel-steps"
PIXELS_PER_MEGAPIXEL = 1_000_000


def job_renders(params: RenderParams, task: Task) -> int:
    """Pipeline runs the job takes: one per camera angle on multi-angle routes, plus the base
    image they are views of when it is text-to-image (image-to-image views the upload)."""
    if not params.angles:
        return 1
    return len(params.angles) + (1 if task == Task.T2I else 0)


def job_cost(params: RenderParams, task: Task) -> float:
    """The job's cost in megapixel-steps (pixels × steps × frames × renders / 10⁶). Steps are
    as requested: image-to-image's ``strength`` shortens some schedules, which a quota need not
    chase."""
    frames = params.num_frames or 1
    pixels = params.width * params.height
    steps = params.num_inference_steps
    return pixels * steps * frames * job_renders(params, task) / PIXELS_PER_MEGAPIXEL
