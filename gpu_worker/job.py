"""A job as the worker holds it between its stages: read, rendered, handed off."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import structlog
from PIL import Image

from common.consumer import Delivery
from common.schemas import JobSpec
from gpu_worker.progress import ProgressReporter


@dataclass
class Job:
    """A delivery read, parsed and with its input decoded: ready to render."""

    delivery: Delivery
    spec: JobSpec
    image: Image.Image | None = None
    reporter: ProgressReporter | None = None
    started_at: float = 0.0
    # The latest render's share of its pipeline call's time, and its name for the charge.
    gpu_s: float = 0.0
    render: str = ""

    @property
    def log(self) -> contextlib.AbstractContextManager[object]:
        return structlog.contextvars.bound_contextvars(job_id=self.spec.job_id)

    @property
    def stop_reason(self) -> str | None:
        """Why its render was stopped (canceled, out of time, claim lost…); ``None`` if not."""
        return self.reporter.stop_reason if self.reporter is not None else None
