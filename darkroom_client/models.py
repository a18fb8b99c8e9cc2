"""What the server answers, typed: submits, job states, feed events and batches."""

from __future__ import annotations

import base64
from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

Status = Literal["pending", "processing", "completed", "failed", "canceled"]
TERMINAL: frozenset[str] = frozenset({"completed", "failed", "canceled"})
Task = Literal["t2i", "i2i", "t2v", "i2v", "multi-angle"]
TASKS: tuple[Task, ...] = ("t2i", "i2i", "t2v", "i2v", "multi-angle")


class Job(BaseModel):
    """A submitted job. ``replayed``: the server recognised the submit's ``Idempotency-Key`` and
    answered with the job an earlier try made."""

    id: str
    api: Literal["api", "v1"] = "api"
    replayed: bool = False
    token: str | None = Field(default=None, description="Read-only token for this job's feed.")


class JobState(BaseModel):
    """A job's status (``GET /api/{id}/status``). ``result_urls`` always lists every result."""

    id: str = Field(validation_alias="session_id")
    status: Status
    progress: int
    message: str
    result_url: str | None = None
    result_urls: list[str] = Field(default_factory=list)
    error: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _all_results(cls, data: Any) -> Any:
        # Seed 1 lists result_urls only when there are several; one is in result_url.
        if isinstance(data, dict) and not data.get("result_urls") and data.get("result_url"):
            return {**data, "result_urls": [data["result_url"]]}
        return data

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL


class JobEvent(BaseModel):
    """One step of a job's life from its feed; ``seq`` is the SSE id a resume starts after."""

    seq: int
    job_id: str
    status: Status
    progress: int
    message: str = ""
    result_urls: list[str] = Field(default_factory=list)
    error: str | None = None
    ts: float

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL


class QueueEvent(BaseModel):
    """While the job waits: how many jobs start before it, and about when it will be done."""

    queue_position: int
    eta_s: float | None = None


class PreviewEvent(BaseModel):
    """A small picture of the render so far (jobs submitted with ``preview: true``)."""

    step: int
    total_steps: int
    image: str = Field(description="A data:image/jpeg;base64,… URI.")

    def jpeg(self) -> bytes:
        return base64.b64decode(self.image.partition(",")[2])


Event = JobEvent | QueueEvent | PreviewEvent


class Batch(BaseModel):
    """A submitted batch: its id and one job per request, in request order."""

    id: str
    job_ids: list[str]
    api: Literal["api", "v1"] = "api"
    replayed: bool = False


class BatchJob(BaseModel):
    id: str = Field(validation_alias="session_id")
    status: Status
    progress: int
    result_url: str | None = None
    result_urls: list[str] | None = None
    error: str | None = None


class BatchState(BaseModel):
    """``GET /api/batches/{id}``: ``status`` is also ``partial`` when its jobs ended differently."""

    id: str = Field(validation_alias="batch_id")
    status: str
    total: int
    counts: dict[str, int]
    progress: int
    jobs: list[BatchJob]

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL or self.status == "partial"
