"""Pydantic contracts that cross a process boundary: requests, job specs, records and events."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from common.tenants import LOCAL_TENANT, Priority
from common.webhook_targets import MAX_URL_CHARS, BadWebhookUrl, parse

MAX_SEED = 2**32 - 1


class JobStatus(StrEnum):
    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATUSES

    @property
    def v1(self) -> str:
        """The Celery-style name seed 2's ``/v1/jobs/{job_id}`` reports."""
        return _V1_NAMES[self]


TERMINAL_STATUSES = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELED})
_V1_NAMES = {
    JobStatus.PENDING: "PENDING",
    JobStatus.PROCESSING: "STARTED",
    JobStatus.COMPLETED: "SUCCESS",
    JobStatus.FAILED: "FAILURE",
    JobStatus.CANCELED: "REVOKED",
}


class Task(StrEnum):
    T2I = "t2i"
    I2I = "i2i"
    T2V = "t2v"
    I2V = "i2v"

    @property
    def video(self) -> bool:
        return self in (Task.T2V, Task.I2V)

    @property
    def needs_image(self) -> bool:
        return self in (Task.I2I, Task.I2V)


def utcnow() -> datetime:
    return datetime.now(UTC)


# --- HTTP requests -------------------------------------------------------------------------

Prompt = Annotated[str, Field(min_length=1, max_length=2000)]
NegativePrompt = Annotated[str | None, Field(default=None, max_length=2000)]
Side = Annotated[int, Field(ge=64, le=4096, description="Pixels; a multiple of 8.")]
Steps = Annotated[int, Field(ge=1, le=500)]
Guidance = Annotated[float, Field(ge=0.0, le=50.0)]
Seed = Annotated[int | None, Field(default=None, ge=0, le=MAX_SEED)]
Angle = Annotated[str, Field(min_length=1, max_length=64)]
Angles = Annotated[
    list[Angle] | None,
    Field(
        default=None,
        min_length=1,
        max_length=8,
        description="Multi-angle models: the camera angles to render, one image each "
        "(a list, or in a form repeated fields or one comma-separated value). "
        "Omitted: the model's default set.",
    ),
]
Frames = Annotated[int | None, Field(default=None, ge=1, le=1000)]
Fps = Annotated[int | None, Field(default=None, ge=1, le=120)]


# What a job's webhook is told about: it starting, its progress (at most every 2 s), its end.
WebhookEventKind = Literal["start", "progress", "completed"]
DEFAULT_WEBHOOK_EVENTS: list[WebhookEventKind] = ["completed"]


# Which seed API a job came through: its webhooks speak that API's fields.
SeedApi = Literal["api", "v1"]


class Webhook(BaseModel):
    """Where a job's events go, and which ones."""

    url: str
    events: list[WebhookEventKind]


class SubmitRequest(BaseModel):
    """What every submit body shares: the webhook fields."""

    # A misspelled field is refused rather than silently ignored.
    model_config = ConfigDict(extra="forbid")

    webhook: str | None = Field(
        default=None,
        max_length=MAX_URL_CHARS,
        description="An https:// or http:// URL that receives the job's events as signed POSTs "
        "(Standard Webhooks). Private, loopback and link-local addresses are refused.",
    )
    webhook_events_filter: list[WebhookEventKind] | None = Field(
        default=None,
        min_length=1,
        description="Which events the webhook receives: any of start, progress (at most one "
        "every 2 s), completed (any end: completed, failed or canceled). Default: completed. "
        "In a form, repeated fields or one comma-separated value.",
    )
    priority: Priority | None = Field(
        default=None,
        description="The job's priority class: high, normal or low. Workers take the highest "
        "class waiting first; a job waiting longer than the aging limit counts as one class "
        "higher. Default: normal (low for a batch's items). An API key may be limited to a "
        "highest class (403 above it).",
    )
    cache: bool = Field(
        default=True,
        description="false: render anew even if an identical request was rendered before, and "
        "keep no copy for later ones. Only requests that name their seed are ever cached.",
    )
    preview: bool = Field(
        default=False,
        description="true: while the job renders, its events feed also carries small JPEG "
        "previews of the picture forming, as `event: preview` frames (at most one every 0.5 s; "
        "see the README's Live progress section).",
    )

    @field_validator("webhook")
    @classmethod
    def _webhook_url(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                parse(value)
            except BadWebhookUrl as exc:
                raise ValueError(str(exc)) from None
        return value

    @field_validator("webhook_events_filter", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    def webhook_target(self) -> Webhook | None:
        if self.webhook is None:
            return None
        events = self.webhook_events_filter or DEFAULT_WEBHOOK_EVENTS
        return Webhook(url=self.webhook, events=list(dict.fromkeys(events)))


class TextToImageRequest(SubmitRequest):
    """Seed 1: ``POST /api/{model}/t2i``."""

    prompt: Prompt
    negative_prompt: NegativePrompt = None
    width: Side = 512
    height: Side = 512
    num_inference_steps: Steps = 50
    guidance_scale: Guidance = 7.5
    seed: Seed = None
    angles: Angles = None


class ImageToImageForm(SubmitRequest):
    """Seed 1: ``POST /api/{model}/i2i``, multipart fields besides the ``image`` file."""

    prompt: Annotated[str, Field(max_length=2000)] = ""
    negative_prompt: NegativePrompt = None
    strength: Annotated[float, Field(gt=0.0, le=1.0)] = 0.8
    guidance_scale: Guidance = 7.5
    num_inference_steps: Steps = 50
    seed: Seed = None
    angles: Angles = None

    @field_validator("angles", mode="before")
    @classmethod
    def _split_angles(cls, value: object) -> object:
        return _split_commas(value)


class TextToVideoRequest(SubmitRequest):
    """``POST /api/{model}/t2v``. Omitted fields take the model's defaults (``GET /api/models``)."""

    prompt: Prompt
    negative_prompt: NegativePrompt = None
    width: Side | None = None
    height: Side | None = None
    num_frames: Frames = None
    fps: Fps = None
    num_inference_steps: Steps | None = None
    guidance_scale: Guidance | None = None
    seed: Seed = None


class ImageToVideoForm(SubmitRequest):
    """``POST /api/{model}/i2v``, multipart fields besides the ``image`` file (the first frame)."""

    prompt: Annotated[str, Field(max_length=2000)] = ""
    negative_prompt: NegativePrompt = None
    num_frames: Frames = None
    fps: Fps = None
    num_inference_steps: Steps | None = None
    guidance_scale: Guidance | None = None
    seed: Seed = None


def _split_commas(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str):
        return _split_commas(value[0])
    return value


class GenerateRequest(SubmitRequest):
    """Seed 2: ``POST /v1/generate``. ``seed=-1`` asks for a random seed."""

    prompt: Prompt
    negative_prompt: NegativePrompt = None
    style_id: Annotated[int, Field(ge=0)] = 0
    seed: Annotated[int, Field(ge=-1, le=MAX_SEED)] = -1
    width: Side = 512
    height: Side = 512
    num_inference_steps: Steps = 50
    guidance_scale: Guidance = 7.5


# --- HTTP responses -------------------------------------------------------------------------


class SubmitResponse(BaseModel):
    """Seed 1's answer to a submit."""

    session_id: str
    status: JobStatus = JobStatus.PENDING
    message: str


class SessionStatus(BaseModel):
    """Seed 1: ``GET /api/{session_id}/status``. ``result_urls`` appears only for jobs with
    several results (multi-angle); otherwise the fields are exactly seed 1's."""

    session_id: str
    status: JobStatus
    progress: int
    message: str
    result_url: str | None
    error: str | None
    result_urls: list[str] | None = Field(
        default=None, description="Every result, in order, when there are several."
    )

    def to_json(self) -> dict[str, object]:
        return self.model_dump(
            mode="json", exclude={"result_urls"} if not self.result_urls else None
        )


class GenerateResponse(BaseModel):
    """Seed 2's answer to ``POST /v1/generate``."""

    job_id: str


class JobStatusResponse(BaseModel):
    """Seed 2: ``GET /v1/jobs/{job_id}``."""

    job_id: str
    status: str = Field(description="PENDING, STARTED, SUCCESS, FAILURE or REVOKED")
    result_urls: list[str] | None
    seed: int | None = Field(default=None, description="The seed actually used.")
    error: str | None = None
    queue_position: int | None = Field(
        default=None,
        description="While the job waits: how many jobs on its route start before it (0: next; "
        "counted up to 1000, so 1000 means 1000 or more). null once it starts or ends.",
    )
    eta_s: float | None = Field(
        default=None,
        description="While the job waits: about how many seconds until its render is done, from "
        "the route's recent render times on the live workers; null without an estimate.",
    )


class ErrorField(BaseModel):
    field: str
    message: str


class ErrorResponse(BaseModel):
    """Every 4xx/5xx body: a stable code, a sentence a person can act on, the fields at fault."""

    error: str
    message: str
    fields: list[ErrorField] = Field(default_factory=list)


class ModelInfo(BaseModel):
    """One model route as ``GET /api/models`` lists it."""

    name: str
    family: str
    weights: str
    tasks: list[str]
    defaults: dict[str, float | int]
    limits: dict[str, int]
    default_angles: list[str]
    loaded: bool = Field(description="Some live worker has this route's pipelines resident.")
    workers_loaded: int = Field(description="How many live workers have it resident.")
    served: bool = Field(
        description="Some live worker serves this route (and did not fail to load it)."
    )
    load_error: str | None = Field(
        default=None,
        description="Why a live worker could not load this route's weights; its jobs on that "
        "worker fail at once with this error.",
    )
    queued: int = Field(description="Jobs waiting or rendering on this route now.")


class RenderTiming(BaseModel):
    """How a worker has been rendering one route lately: what queue ETAs are made of."""

    render_s: float = Field(description="Seconds of a pipeline call, a moving average.")
    batch_size: float = Field(description="Jobs per pipeline call, a moving average.")


class WorkerHeartbeat(BaseModel):
    """What a live worker says about itself every few seconds (a field of ``workers``)."""

    consumer: str
    device: str
    routes: list[str] = Field(description="The routes this worker serves.")
    loaded: list[str] = Field(description="The routes whose pipelines are resident now.")
    failed: dict[str, str] = Field(
        default_factory=dict, description="Routes whose weights failed to load here: the error."
    )
    fingerprints: dict[str, str] = Field(
        default_factory=dict,
        description="Loaded routes: a digest of how this worker renders them (weights and their "
        "revision, LoRAs, dtype, device, library versions); the result cache's half of a key.",
    )
    render_times: dict[str, RenderTiming] = Field(
        default_factory=dict, description="Routes rendered here lately: how long a call takes."
    )
    ts: float


class Health(BaseModel):
    status: str
    service: str
    redis: str


# --- Between services -----------------------------------------------------------------------


class RenderParams(BaseModel):
    """What the pipeline needs; defaults already applied and the seed already resolved."""

    prompt: str
    negative_prompt: str | None = None
    width: int
    height: int
    num_inference_steps: int
    guidance_scale: float
    seed: int
    strength: float | None = None
    # Video: frames to render and the rate they play at.
    num_frames: int | None = None
    fps: int | None = None
    # Multi-angle routes: one output per camera angle, in this order.
    angles: list[str] | None = None


class JobSpec(BaseModel):
    """A ``jobs:<model>`` stream entry: everything a worker needs to start."""

    job_id: str
    model: str
    task: Task
    params: RenderParams
    input_blob: str | None = None
    created_at: datetime
    # Unix time after which the job fails with "deadline exceeded" instead of rendering on.
    deadline_at: float | None = None
    # Who submitted it: the API key's name (``local`` with auth off).
    tenant: str = LOCAL_TENANT
    # The request's half of its result-cache key (``common.result_cache``); None: not cached.
    cache_request: str | None = None
    # Send previews of the render on the job's feed (``SubmitRequest.preview``).
    preview: bool = False
    # Its priority class (``common.scheduler``).
    priority: Priority = "normal"


class OutputBlob(BaseModel):
    key: str
    content_type: str
    extension: str


class RenderedJob(BaseModel):
    """A ``rendered`` stream entry: a finished render waiting for storage."""

    job_id: str
    created_at: datetime
    outputs: list[OutputBlob]
    input_blob: str | None = None
    # Store the result in the result cache under this digest once the job completes.
    cache_digest: str | None = None
    # A result-cache hit: nothing was rendered; these stored objects are the result.
    cached_keys: list[str] = Field(default_factory=list)


class JobEvent(BaseModel):
    """One step of a job's life; ``seq`` is its SSE ``id:`` and never repeats."""

    seq: int
    job_id: str
    status: JobStatus
    progress: int = Field(ge=0, le=100)
    message: str = ""
    result_urls: list[str] = Field(default_factory=list)
    error: str | None = None
    ts: float = Field(description="Unix time in seconds.")

    @property
    def terminal(self) -> bool:
        return self.status.terminal


class JobRecord(BaseModel):
    """The ``job:<id>`` hash, parsed."""

    job_id: str
    status: JobStatus
    progress: int
    message: str
    model: str
    task: Task
    params: RenderParams
    seq: int
    result_urls: list[str] = Field(default_factory=list)
    error: str | None = None
    attempts: int = 0
    created_at: datetime
    updated_at: float | None = None
    # Only this tenant (and admin keys) may read, watch or cancel the job.
    tenant: str = LOCAL_TENANT
    # Its entry in the ready stream ``jobs:<model>``, once the scheduler moved it there.
    entry_id: str | None = None
    priority: Priority = "normal"
    # The waiting list holding it (``Keys.waiting``) until the scheduler moves it; None after.
    queue: str | None = None

    def snapshot(self) -> JobEvent:
        """The record as an event, so an SSE client's first message has the shape of the rest."""
        return JobEvent(
            seq=self.seq,
            job_id=self.job_id,
            status=self.status,
            progress=self.progress,
            message=self.message,
            result_urls=self.result_urls,
            error=self.error,
            ts=self.updated_at or self.created_at.timestamp(),
        )
