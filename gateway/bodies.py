"""Reading request bodies into pydantic models, with 4xx errors that name the field at fault."""

from __future__ import annotations

import asyncio
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException
from starlette.requests import Request

from gateway.errors import ApiError, field_error, from_validation
from gateway.images import inspect_image

M = TypeVar("M", bound=BaseModel)


def _content_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def read_json(request: Request, model: type[M], *, max_bytes: int) -> M:
    if _content_type(request) != "application/json":
        raise ApiError(415, "unsupported_media_type", "Send the request as application/json.")
    body = await request.body()
    if len(body) > max_bytes:
        raise ApiError(413, "payload_too_large", f"JSON body is larger than {max_bytes} bytes.")
    try:
        return model.model_validate_json(body or b"null")
    except ValidationError as exc:
        if any(e["type"] == "json_invalid" for e in exc.errors()):
            raise ApiError(400, "invalid_json", "The body is not valid JSON.") from None
        if any(e["type"] == "model_type" and not e["loc"] for e in exc.errors()):
            raise ApiError(422, "invalid_request", "The body must be a JSON object.") from None
        raise from_validation(exc) from None


async def read_image_form(
    request: Request, model: type[M], *, file_field: str, max_upload_bytes: int, max_pixels: int
) -> tuple[M, bytes, tuple[int, int]]:
    """A multipart form: its fields validated by ``model`` and one checked image file."""
    if _content_type(request) != "multipart/form-data":
        raise ApiError(
            415,
            "unsupported_media_type",
            f"Send the request as multipart/form-data with the image in {file_field!r}.",
        )
    try:
        async with request.form(max_files=1, max_fields=32, max_part_size=64 * 1024) as form:
            upload = form.get(file_field)
            if not isinstance(upload, UploadFile):
                raise field_error(file_field, "an image file is required")
            data = await upload.read(max_upload_bytes + 1)
            fields: dict[str, Any] = {}
            for key, value in form.multi_items():
                if key == file_field:
                    continue
                # A repeated field (angles=front&angles=back) is a list.
                fields[key] = [*_as_list(fields[key]), value] if key in fields else value
    except MultiPartException as exc:
        raise ApiError(
            400, "invalid_form", f"The multipart body could not be read: {exc.message}"
        ) from None
    if len(data) > max_upload_bytes:
        raise field_error(
            file_field, f"the file is larger than {max_upload_bytes} bytes", status_code=413
        )
    stray_files = [k for k, v in fields.items() if not all(isinstance(i, str) for i in _as_list(v))]
    if stray_files:
        raise field_error(stray_files[0], "unexpected file")
    try:
        # Empty form fields mean "not given", as browsers send them for blank inputs.
        parsed = model.model_validate({k: v for k, v in fields.items() if v != ""})
    except ValidationError as exc:
        raise from_validation(exc) from None
    size = await asyncio.to_thread(inspect_image, data, field=file_field, max_pixels=max_pixels)
    return parsed, data, size


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]
