"""HTTP errors as JSON with one stable shape; no traceback ever reaches a client."""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse

from common.logging import get_logger
from common.redis_errors import REDIS_TRANSIENT, describe
from common.schemas import ErrorField, ErrorResponse
from gateway.openai_errors import is_openai_path, openai_status, to_openai

log = get_logger(__name__)

REDIS_RETRY_AFTER_S = 2


class ApiError(Exception):
    def __init__(
        self,
        status_code: int,
        code: str,
        message: str,
        fields: list[ErrorField] | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status_code = status_code
        self.body = ErrorResponse(error=code, message=message, fields=fields or [])
        self.headers = headers


def not_found(what: str, ident: str) -> ApiError:
    return ApiError(404, "not_found", f"No {what} with id {ident!r}; it may have expired.")


def field_error(field: str, message: str, status_code: int = 422) -> ApiError:
    return ApiError(
        status_code,
        "invalid_request",
        f"{field}: {message}",
        [ErrorField(field=field, message=message)],
    )


def from_validation(exc: ValidationError, prefix: str = "") -> ApiError:
    fields = []
    for err in exc.errors(include_url=False):
        name = ".".join(str(p) for p in err["loc"]) or "body"
        message = err["msg"] if err["type"] != "extra_forbidden" else "unknown field"
        fields.append(ErrorField(field=f"{prefix}{name}", message=message))
    summary = "; ".join(f"{f.field}: {f.message}" for f in fields)
    return ApiError(422, "invalid_request", summary, fields)


def error_response(
    path: str, status_code: int, body: ErrorResponse, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """The error as JSON: Darkroom's shape, or OpenAI's on the OpenAI Images API's paths."""
    if is_openai_path(path):
        status_code = openai_status(status_code)
        return JSONResponse(
            to_openai(status_code, body).model_dump(), status_code=status_code, headers=headers
        )
    return JSONResponse(body.model_dump(), status_code=status_code, headers=headers)


def _json(
    request: Request,
    status_code: int,
    body: ErrorResponse,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    return error_response(request.url.path, status_code, body, headers)


async def handle_api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return _json(request, exc.status_code, exc.body, exc.headers)


async def handle_http_exception(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    body = ErrorResponse(error=code, message=str(exc.detail))
    return _json(request, exc.status_code, body, exc.headers)


async def handle_redis_unavailable(request: Request, exc: Exception) -> JSONResponse:
    log.warning("http.redis_unavailable", path=request.url.path, error=describe(exc))
    body = ErrorResponse(
        error="unavailable",
        message="The job store cannot take this request right now; nothing was changed. "
        "Retry shortly.",
    )
    return _json(request, 503, body, {"Retry-After": str(REDIS_RETRY_AFTER_S)})


async def handle_unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("http.unhandled_error", path=request.url.path, method=request.method)
    return _json(
        request,
        500,
        ErrorResponse(
            error="internal_error",
            message="The server hit an unexpected error; it has been logged.",
        ),
    )


EXCEPTION_HANDLERS = {
    ApiError: handle_api_error,
    HTTPException: handle_http_exception,
    **{cls: handle_redis_unavailable for cls in REDIS_TRANSIENT if cls is not OSError},
    Exception: handle_unexpected,
}
