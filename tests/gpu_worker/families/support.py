"""What the family tests share: a job spec with per-family defaults, and an awkward input image."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np
from PIL import Image

from common.schemas import JobSpec, RenderParams, Task


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
