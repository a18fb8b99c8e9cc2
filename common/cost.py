"""What a job costs, in one unit shared by quotas (a key's ``max_cost``) and anything that weighs
jobs against each other.

The unit is the **megapixel-step**: one denoising step over one million output pixels. A job
costs ``width × height / 1e6 × steps × frames × renders``: frames is 1 for an image, renders is
the number of pipeline runs (a multi-angle job runs once per angle, plus once for its base image
in text-to-image). A 1024×1024 image in 30 steps is about 31.5; a 257-frame 1280×704 video in 40
steps about 9,260. It counts what a request asks for, not what a GPU measures: it is known before
anything is queued, and it is the same on every machine.
"""

from __future__ import annotations

from common.schemas import RenderParams, Task

COST_UNIT = "megapixel-steps"


def renders(task: Task, params: RenderParams) -> int:
    """Pipeline runs the job needs: one, or one per angle plus the text-to-image base image."""
    if not params.angles:
        return 1
    return len(params.angles) + (1 if task == Task.T2I else 0)


def job_cost(task: Task, params: RenderParams) -> float:
    """The job's cost in megapixel-steps (``COST_UNIT``)."""
    megapixels = params.width * params.height / 1_000_000
    frames = params.num_frames or 1
    return megapixels * params.num_inference_steps * frames * renders(task, params)
