"""Exceptions: the server's JSON error as a typed exception, a job that ended badly, a network
that stayed down."""

from __future__ import annotations

from typing import Any

import httpx

from darkroom_client.models import JobState


class DarkroomError(Exception):
    """Every error this client raises."""


class ApiError(DarkroomError):
    """The server refused a request; ``body`` is its JSON error (``error``, ``message``,
    ``fields``)."""

    def __init__(self, status_code: int, body: dict[str, Any], retry_after_s: float | None) -> None:
        self.status_code = status_code
        self.body = body
        self.code = str(body.get("error", "http_error"))
        self.message = str(body.get("message", "")) or f"HTTP {status_code}"
        self.fields: list[dict[str, str]] = list(body.get("fields") or [])
        self.retry_after_s = retry_after_s
        super().__init__(f"{status_code} {self.code}: {self.message}")


class BadRequest(ApiError):
    """400, 413, 415, 422: the request itself is wrong; nothing was queued."""


class Unauthorized(ApiError):
    """401, 403: no key, a wrong key, or one not allowed this."""


class NotFound(ApiError):
    """404: unknown (or expired, or another tenant's) job, batch or model."""


class Conflict(ApiError):
    """409, 410: the job already ended, or an ``Idempotency-Key`` clash."""


class RateLimited(ApiError):
    """429: a full queue or the key's quota; ``retry_after_s`` says when to try again."""


class Unavailable(ApiError):
    """503: not now, nothing was changed."""


class ServerError(ApiError):
    """Any other 5xx."""


_BY_STATUS: dict[int, type[ApiError]] = {
    400: BadRequest,
    413: BadRequest,
    415: BadRequest,
    422: BadRequest,
    401: Unauthorized,
    403: Unauthorized,
    404: NotFound,
    409: Conflict,
    410: Conflict,
    429: RateLimited,
    503: Unavailable,
}


def retry_after_s(response: httpx.Response) -> float | None:
    raw = response.headers.get("retry-after")
    try:
        return max(float(raw), 0.0) if raw is not None else None
    except ValueError:
        return None  # an HTTP date: not what Darkroom sends


def error_from(response: httpx.Response) -> ApiError:
    """The exception for an error response (whose body has been read)."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        body = {"error": "http_error", "message": response.text[:500]}
    elif isinstance(body.get("error"), dict):  # OpenAI's shape, on /v1/images/…
        inner = body["error"]
        body = {"error": inner.get("code") or inner.get("type"), "message": inner.get("message")}
    status = response.status_code
    cls = _BY_STATUS.get(status, ServerError if status >= 500 else ApiError)
    return cls(status, body, retry_after_s(response))


class ConnectionFailed(DarkroomError):
    """The server could not be reached (or kept dropping the connection) after every retry."""


class JobFailed(DarkroomError):
    """``wait()``: the job ended ``failed``; ``state`` is its final status, with the error."""

    def __init__(self, state: JobState) -> None:
        self.state = state
        super().__init__(f"job {state.id} {state.status}: {state.error or state.message}")


class JobCanceled(JobFailed):
    """``wait()``: the job was canceled."""


class WebhookVerificationError(DarkroomError):
    """A webhook's signature, id or timestamp does not check out."""
