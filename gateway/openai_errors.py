"""Darkroom's errors in OpenAI's shape, on the OpenAI Images API's paths only.

Every error on those paths (a refused key, a rate limit, a bad field, a 404 from the router)
goes out as ``{"error": {"message", "type", "param", "code"}}`` with OpenAI's status codes: 400
where Darkroom says 422 or 415. The OpenAI SDK turns them into its exception types.
"""

from __future__ import annotations

from common.schemas import ErrorResponse
from gateway.openai_schemas import OpenAIError, OpenAIErrorDetail

OPENAI_PATHS = frozenset({"/v1/models"})
OPENAI_PREFIXES = ("/v1/images/", "/v1/models/")
# Darkroom's codes that OpenAI has a name of its own for.
_CODES = {
    "unauthorized": "invalid_api_key",
    "unknown_model": "model_not_found",
    "rate_limited": "rate_limit_exceeded",
}


def is_openai_path(path: str) -> bool:
    return path in OPENAI_PATHS or path.startswith(OPENAI_PREFIXES)


def openai_status(status_code: int) -> int:
    """OpenAI answers invalid input with 400 whatever was wrong with it."""
    return 400 if status_code in (415, 422) else status_code


def _type(status_code: int) -> str:
    if status_code >= 500:
        return "server_error"
    if status_code == 429:
        return "requests"
    return "invalid_request_error"


def to_openai(status_code: int, body: ErrorResponse) -> OpenAIError:
    param = body.fields[0].field if body.fields else None
    return OpenAIError(
        error=OpenAIErrorDetail(
            message=body.message,
            type=_type(status_code),
            param=param,
            code=_CODES.get(body.error, body.error),
        )
    )
