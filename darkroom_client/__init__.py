"""Darkroom's Python client: submit, watch, wait, cancel and download, sync or async.

from darkroom_client import Client

with Client("http://localhost:8000") as darkroom:
    job = darkroom.submit("sd", "a lighthouse at dusk", num_inference_steps=20)
    print(darkroom.download(darkroom.wait(job.id), "out"))
"""

from darkroom_client.aio import AsyncClient
from darkroom_client.errors import (
    ApiError,
    BadRequest,
    Conflict,
    ConnectionFailed,
    DarkroomError,
    JobCanceled,
    JobFailed,
    NotFound,
    RateLimited,
    ServerError,
    Unauthorized,
    Unavailable,
    WebhookVerificationError,
)
from darkroom_client.models import (
    TASKS,
    Batch,
    BatchJob,
    BatchState,
    Event,
    Job,
    JobEvent,
    JobState,
    PreviewEvent,
    QueueEvent,
    Task,
)
from darkroom_client.sync import Client
from darkroom_client.webhooks import verify_webhook

__all__ = [
    "TASKS",
    "ApiError",
    "AsyncClient",
    "BadRequest",
    "Batch",
    "BatchJob",
    "BatchState",
    "Client",
    "Conflict",
    "ConnectionFailed",
    "DarkroomError",
    "Event",
    "Job",
    "JobCanceled",
    "JobEvent",
    "JobFailed",
    "JobState",
    "NotFound",
    "PreviewEvent",
    "QueueEvent",
    "RateLimited",
    "ServerError",
    "Task",
    "Unauthorized",
    "Unavailable",
    "WebhookVerificationError",
    "verify_webhook",
]
