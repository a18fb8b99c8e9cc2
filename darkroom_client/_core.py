"""What the sync and async clients share: the requests each call makes, how answers and feed
frames are read, and when to retry. No I/O here."""

from __future__ import annotations

import json
import mimetypes
import os
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import httpx
from httpx_sse import ServerSentEvent

from darkroom_client.errors import ApiError, JobCanceled, JobFailed, error_from, retry_after_s
from darkroom_client.models import (
    Batch,
    Event,
    Job,
    JobEvent,
    JobState,
    PreviewEvent,
    QueueEvent,
    Task,
)

DEFAULT_URL = "http://localhost:8000"
URL_ENV = "DARKROOM_URL"
API_KEY_ENV = "DARKROOM_API_KEY"
IDEMPOTENCY_HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
JOB_TOKEN_HEADER = "Darkroom-Job-Token"

# A submit is retried this often after a connection error or a "not now" (503 / in-flight 409).
MAX_RETRIES = 4
# A dropped feed is reopened (with Last-Event-ID) this many times in a row before giving up.
MAX_RECONNECTS = 8
BACKOFF_BASE_S = 0.5
BACKOFF_MAX_S = 8.0
# The server pings an idle feed every 15 s; a feed silent this long is dead.
FEED_READ_TIMEOUT_S = 60.0
REQUEST_TIMEOUT_S = 30.0

ImageInput = bytes | str | os.PathLike[str] | BinaryIO


def default_url(url: str | None) -> str:
    return (url or os.environ.get(URL_ENV) or DEFAULT_URL).rstrip("/")


def default_api_key(api_key: str | None) -> str | None:
    return api_key or os.environ.get(API_KEY_ENV) or None


def auth_headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def backoff_s(attempt: int) -> float:
    return float(min(BACKOFF_BASE_S * 2**attempt, BACKOFF_MAX_S))


@dataclass
class Call:
    """One HTTP request; a submit keeps its ``Idempotency-Key`` across retries."""

    method: str
    path: str
    json: Any = None
    data: dict[str, Any] | None = None
    files: dict[str, tuple[str, bytes, str]] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    api: str = "api"

    def kwargs(self) -> dict[str, Any]:
        return {
            "json": self.json,
            "data": self.data,
            "files": self.files,
            "headers": self.headers,
        }


def _drop_none(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def _image_part(image: ImageInput) -> tuple[str, bytes, str]:
    if isinstance(image, bytes):
        return ("image", image, "application/octet-stream")
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return (path.name, path.read_bytes(), kind)
    name = Path(getattr(image, "name", "image")).name
    return (name, image.read(), mimetypes.guess_type(name)[0] or "application/octet-stream")


def _form_value(value: Any) -> Any:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]  # repeated fields
    return str(value)


def submit_call(
    model: str,
    task: Task,
    prompt: str | None,
    *,
    image: ImageInput | None,
    params: Mapping[str, Any],
    headers: Mapping[str, str] | None = None,
    idempotency_key: str | None = None,
) -> Call:
    """The request for one seed-1 submit. ``multi-angle`` is ``t2i`` (or ``i2i`` with an image)
    with ``angles``, on a multi-angle route."""
    if task == "multi-angle":
        task = "i2i" if image is not None else "t2i"
    fields = _drop_none({"prompt": prompt, **params})
    extra = {IDEMPOTENCY_HEADER: idempotency_key or str(uuid.uuid4()), **(headers or {})}
    path = f"/api/{model}/{task}"
    if task in ("i2i", "i2v"):
        if image is None:
            raise ValueError(f"task {task} needs an image")
        data = {k: _form_value(v) for k, v in fields.items()}
        return Call("POST", path, data=data, files={"image": _image_part(image)}, headers=extra)
    if image is not None:
        raise ValueError(f"task {task} takes no image (use i2i or i2v)")
    return Call("POST", path, json=fields, headers=extra)


def generate_call(prompt: str, params: Mapping[str, Any], idempotency_key: str | None) -> Call:
    """Seed 2's ``POST /v1/generate``."""
    key = idempotency_key or str(uuid.uuid4())
    body = _drop_none({"prompt": prompt, **params})
    return Call("POST", "/v1/generate", json=body, headers={IDEMPOTENCY_HEADER: key}, api="v1")


def batch_call(
    model: str | None, requests: Sequence[Mapping[str, Any]], idempotency_key: str | None
) -> Call:
    """``POST /api/{model}/batch`` (seed 1) or, without a model, ``POST /v1/batches``."""
    key = idempotency_key or str(uuid.uuid4())
    body = {"requests": [dict(r) for r in requests]}
    path, api = (f"/api/{model}/batch", "api") if model else ("/v1/batches", "v1")
    return Call("POST", path, json=body, headers={IDEMPOTENCY_HEADER: key}, api=api)


def should_retry_submit(response: httpx.Response) -> float | None:
    """Seconds to wait before resending a submit, or None to take this answer as final."""
    wait = retry_after_s(response)
    if wait is None:
        return None
    if response.status_code == 503:
        return wait
    if response.status_code == 409 and _code(response) == "idempotency_key_in_flight":
        return wait  # the first try is still being written: its answer is coming
    return None


def _code(response: httpx.Response) -> str | None:
    try:
        body = response.json()
    except ValueError:
        return None
    return body.get("error") if isinstance(body, dict) else None


def checked(response: httpx.Response) -> httpx.Response:
    if response.is_error:
        raise error_from(response)
    return response


def job_from(call: Call, response: httpx.Response) -> Job:
    body = checked(response).json()
    return Job(
        id=body["session_id"] if call.api == "api" else body["job_id"],
        api="v1" if call.api == "v1" else "api",
        replayed=response.headers.get(REPLAYED_HEADER) == "true",
        token=response.headers.get(JOB_TOKEN_HEADER),
    )


def batch_from(call: Call, response: httpx.Response) -> Batch:
    body = checked(response).json()
    return Batch(
        id=body["batch_id"],
        job_ids=body["session_ids"] if call.api == "api" else body["job_ids"],
        api="v1" if call.api == "v1" else "api",
        replayed=response.headers.get(REPLAYED_HEADER) == "true",
    )


def parse_frame(sse: ServerSentEvent) -> Event | None:
    """A feed frame as an event; None for what is not one (heartbeats, unknown names)."""
    if not sse.data:
        return None  # httpx-sse turns a heartbeat comment after an id into an empty event
    data = json.loads(sse.data)
    if sse.event == "message":
        return JobEvent.model_validate(data)
    if sse.event == "queue":
        return QueueEvent.model_validate(data)
    if sse.event == "preview":
        return PreviewEvent.model_validate(data)
    return None


@dataclass
class Cursor:
    """Where a feed is: the id of the last event taken, which a reconnect resumes after."""

    last_event_id: int | None = None

    def headers(self) -> dict[str, str]:
        last = self.last_event_id
        return {} if last is None else {"Last-Event-ID": str(last)}


def feed_timeout() -> httpx.Timeout:
    return httpx.Timeout(REQUEST_TIMEOUT_S, read=FEED_READ_TIMEOUT_S)


def feed_error(response: httpx.Response) -> ApiError:
    return error_from(response)


def result_name(url: str) -> str:
    """The file name a result is saved under: the last part of its URL's path."""
    return httpx.URL(url).path.rsplit("/", 1)[-1] or "result"


def same_origin(base: httpx.URL, url: str) -> bool:
    """Whether ``url`` is on the gateway (which may get the API key) or elsewhere (S3: not)."""
    other = httpx.URL(url)
    return (other.scheme, other.host, other.port) == (base.scheme, base.host, base.port)


def finished(state: JobState) -> JobState:
    """A terminal state as ``wait()`` returns it: completed, or the failure raised."""
    if state.status == "failed":
        raise JobFailed(state)
    if state.status == "canceled":
        raise JobCanceled(state)
    return state
