"""What the family tests share: pipelines loaded on the CPU, a job spec with per-family defaults,
and an awkward input image."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np
import torch
from PIL import Image

from common.catalog import ModelRoute
from common.schemas import JobSpec, RenderParams, Task
from gpu_worker.families import Family


def load_on_cpu(family: Family, route: ModelRoute) -> dict[Task, Any]:
    """A route's pipelines through the family's production ``load``, in float32 on the CPU, with
    no progress bars."""
    loaded: dict[Task, Any] = family.load(route, torch.float32, torch.device("cpu"))
    for pipe in loaded.values():
        pipe.set_progress_bar_config(disable=True)
    return loaded


def job_spec(model: str, task: Task, defaults: dict[str, Any], params: dict[str, Any]) -> JobSpec:
    return JobSpec(
        job_id="job-1",
        model=model,
        task=task,
        params=RenderParams(**(defaults | params)),
        created_at=datetime.now(UTC),
    )


def source_image() -> Image.Image:
    pixels = np.random.default_rng(0).integers(0, 256, (48, 80, 4), np.uint8)
    return Image.fromarray(pixels, "RGBA")  # another size and an alpha channel, like an upload
