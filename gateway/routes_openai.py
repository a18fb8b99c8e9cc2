"""The OpenAI Images API: ``POST /v1/images/generations``, ``POST /v1/images/edits`` and
``GET /v1/models``, for the tools that speak only OpenAI's API.

A request of ``n`` images is ``n`` ordinary jobs with consecutive seeds, through the normal queue:
one request against the key's rate, ``n`` jobs against its ``max_queued``. A generation's jobs
are written in one step (a batch), so workers take them together and micro-batch them; an edit's
are written one by one (each carries its own input image), and a refusal part-way cancels those
already queued. The answer waits for the images (``gateway.job_waiter``); a client that
disconnects first cancels its jobs. ``Idempotency-Key`` is not honoured here: a retry after a
timeout is a new request, since the timed-out one's jobs were canceled with its connection.
Errors are in OpenAI's shape (``gateway.openai_errors``).
"""

from __future__ import annotations

import asyncio
import base64
import re
import time
from dataclasses import replace

import structlog
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from common.catalog import ModelRoute
from common.jobs import DEADLINE_EXCEEDED
from common.logging import get_logger
from common.schemas import (
    MAX_SEED,
    ErrorField,
    ImageToImageForm,
    JobRecord,
    JobStatus,
    RenderParams,
    Task,
)
from gateway.auth import tenant_of
from gateway.batch_submit import submit_batch
from gateway.bodies import read_json
from gateway.errors import ApiError, field_error, from_validation
from gateway.images import fit_to_route, inspect_image
from gateway.job_waiter import ClientGone, KeyRevoked, cancel_unfinished, wait_for_jobs
from gateway.openai_schemas import (
    ImageData,
    ImageEditForm,
    ImageGenerationRequest,
    ImagesResponse,
    OpenAIError,
    OpenAIModel,
    OpenAIModelList,
    ResponseFormat,
)
from gateway.openapi import operation
from gateway.quotas import RATE_HEADERS_DOCS
from gateway.result_bytes import ResultReader
from gateway.route_params import resolve_seed, route_angles
from gateway.services import Services, services
from gateway.submit import CANCEL_AFTER_HEADER, Admission, admission

log = get_logger(__name__)

# A model list's ``created``: routes have no date of their own; this process's start will do.
STARTED_AT = int(time.time())
_SIZE = re.compile(r"^\s*(\d{1,5})\s*[xX]\s*(\d{1,5})\s*$")
MIN_SIDE_PX = 64
# Answers about how the jobs ended: a retry would end the same way, so the SDK must not retry.
NO_RETRY = {"x-should-retry": "false"}
IMAGE_FIELDS = ("image", "image[]")

_STATUS_DOCS = {
    400: "Invalid input: a field (`error.param` names it), the body's JSON or multipart, its "
    "Content-Type, an unusable size for the route, or a cost above the key's `max_cost`.",
    404: "No such model route (`model_not_found`).",
    408: "The jobs passed the request's Cancel-After deadline (`deadline_exceeded`).",
    409: "A job was canceled by another request (`job_canceled`).",
    429: "A limit was reached and nothing was queued: the key's rate (`rate_limit_exceeded`), "
    "its jobs at once (`max_queued_exceeded`, n images are n jobs) or the route's queue "
    "(`queue_full`). Retry after the Retry-After header's seconds.",
    500: "A render failed (`render_failed`), or its result could not be read back.",
}
_OPENAI_OP = {
    "tag": "openai",
    "error_model": OpenAIError,
    "invalid_status": 400,
    "headers": {
        CANCEL_AFTER_HEADER: "Seconds: fail the jobs (408 `deadline_exceeded`) if they have "
        "not finished this long after submission."
    },
    "response_headers": {**RATE_HEADERS_DOCS, "Retry-After": "On a 429: seconds to wait."},
    "status_docs": _STATUS_DOCS,
}


def _image_routes(svc: Services) -> list[ModelRoute]:
    return [r for r in svc.catalog.routes.values() if Task.T2I in r.tasks or Task.I2I in r.tasks]


def _route(svc: Services, model: str | None, task: Task) -> ModelRoute:
    """The route a request names (omitted: the catalogue's default): a 404 for an unknown one,
    as OpenAI answers, a 400 for one that does not serve this task."""
    name = model or svc.catalog.v1_route
    route = svc.catalog.routes.get(name)
    if route is None:
        known = ", ".join(sorted(r.name for r in _image_routes(svc)))
        raise ApiError(
            404,
            "unknown_model",
            f"The model {name!r} does not exist; Darkroom's image models are: {known}.",
            [ErrorField(field="model", message="unknown model")],
        )
    if task not in route.tasks:
        verb = "edit images" if task == Task.I2I else "generate images"
        raise field_error("model", f"model {name!r} cannot {verb}; see GET /v1/models", 400)
    return route


def _size(route: ModelRoute, size: str | None) -> tuple[int, int] | None:
    """``WIDTHxHEIGHT`` checked against the route's limits; ``None`` for ``auto`` or none."""
    if size is None or size.strip().lower() == "auto":
        return None
    found = _SIZE.match(size)
    if found is None:
        raise field_error("size", f"{size!r}: give WIDTHxHEIGHT in pixels, e.g. 512x512", 400)
    width, height = int(found[1]), int(found[2])
    step = route.size_multiple
    for side, limit in ((width, route.max_width), (height, route.max_height)):
        if not MIN_SIDE_PX <= side <= limit or side % step:
            raise field_error(
                "size",
                f"{size!r} does not fit model {route.name!r}: width {MIN_SIDE_PX} to "
                f"{route.max_width}, height {MIN_SIDE_PX} to {route.max_height}, both "
                f"multiples of {step}",
                400,
            )
    return width, height


def _seeds(seed: int | None, n: int) -> list[int]:
    first = resolve_seed(seed)
    return [(first + i) % (MAX_SEED + 1) for i in range(n)]


def _no_stream(stream: bool | None) -> None:
    if stream:
        raise field_error(
            "stream", "Darkroom answers with the finished images; leave stream unset", 400
        )


def _admission(admit: Admission) -> Admission:
    # See the module's docstring: no Idempotency-Key here.
    return replace(admit, idempotency=None)


@operation(
    summary="Create images from a prompt (OpenAI Images API)",
    json_body=ImageGenerationRequest,
    responses={200: ImagesResponse},
    description="`n` images are `n` jobs with consecutive seeds, queued together; the answer "
    "waits for them. A client that disconnects first cancels them.",
    **_OPENAI_OP,
)
async def generations(request: Request) -> Response:
    svc = services(request)
    admit = _admission(await admission(request, svc))
    body = await read_json(request, ImageGenerationRequest, max_bytes=svc.settings.max_json_bytes)
    _no_stream(body.stream)
    route = _route(svc, body.model, Task.T2I)
    defaults = route.defaults
    width, height = _size(route, body.size) or (defaults.width, defaults.height)
    angles = route_angles(route, body.angles, 400)
    items = [
        (
            RenderParams(
                prompt=body.prompt,
                negative_prompt=body.negative_prompt,
                width=width,
                height=height,
                num_inference_steps=body.num_inference_steps or defaults.num_inference_steps,
                guidance_scale=(
                    defaults.guidance_scale if body.guidance_scale is None else body.guidance_scale
                ),
                seed=seed,
                angles=angles,
            ),
            body,
        )
        for seed in _seeds(body.seed, body.n or 1)
    ]
    # The items differ only in their seed: checked once here, each field named as sent.
    svc.submitter.check(route, Task.T2I, items[0][0], body, admit)
    submitted = await submit_batch(
        svc, route, list(items), body, admission=admit, api="api", default_priority="normal"
    )
    return await _answer(
        request, svc, submitted.job_ids, body.response_format, (width, height), admit
    )


@operation(
    summary="Edit an image from a prompt (OpenAI Images API)",
    form_body=ImageEditForm,
    file_field="image",
    responses={200: ImagesResponse},
    description="Multipart: the image in `image` (or one `image[]`). `mask` is refused: no "
    "model route can inpaint. Without `size` the result keeps the image's aspect ratio within "
    "the route's limits. `n` images are `n` jobs with consecutive seeds.",
    **_OPENAI_OP,
)
async def edits(request: Request) -> Response:
    svc = services(request)
    admit = _admission(await admission(request, svc))
    form, image, (in_width, in_height) = await _read_edit_form(request, svc)
    _no_stream(form.stream)
    route = _route(svc, form.model, Task.I2I)
    size = _size(route, form.size) or fit_to_route(in_width, in_height, route)
    steps = form.num_inference_steps or route.defaults.num_inference_steps
    if int(steps * form.strength) < 1:
        raise field_error(
            "strength",
            f"strength {form.strength} × num_inference_steps {steps} leaves no denoising step",
            400,
        )
    job_ids: list[str] = []
    try:
        for seed in _seeds(form.seed, form.n or 1):
            item = ImageToImageForm(
                prompt=form.prompt,
                negative_prompt=form.negative_prompt,
                strength=form.strength,
                guidance_scale=(
                    route.defaults.guidance_scale
                    if form.guidance_scale is None
                    else form.guidance_scale
                ),
                num_inference_steps=steps,
                seed=seed,
                angles=route_angles(route, form.angles, 400),
                webhook=form.webhook,
                webhook_events_filter=form.webhook_events_filter,
                priority=form.priority,
                # A seed Darkroom chose is no request to remember: cache only the caller's.
                cache=form.cache and form.seed is not None,
            )
            submitted = await svc.submitter.image_to_image(
                route.name, item, image, size, admission=admit
            )
            job_ids.append(submitted.job_id)
    except BaseException:
        # All or nothing, as a generation's batch: what was queued before the refusal goes.
        await cancel_unfinished(svc.jobs, job_ids, "Canceled: the request was refused")
        raise
    return await _answer(request, svc, job_ids, form.response_format, size, admit)


async def _read_edit_form(
    request: Request, svc: Services
) -> tuple[ImageEditForm, bytes, tuple[int, int]]:
    """The fields and the one image, checked; OpenAI's array form ``image[]`` is accepted."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "multipart/form-data":
        raise ApiError(
            415, "unsupported_media_type", "Send multipart/form-data with the image in 'image'."
        )
    max_bytes = svc.settings.max_upload_bytes
    try:
        async with request.form(max_files=4, max_fields=64, max_part_size=64 * 1024) as form:
            if "mask" in form:
                raise field_error(
                    "mask",
                    "no Darkroom model can inpaint; edit the whole image without a mask",
                    400,
                )
            uploads = [v for key in IMAGE_FIELDS for v in form.getlist(key)]
            if not uploads or not all(isinstance(u, UploadFile) for u in uploads):
                raise field_error("image", "an image file is required", 400)
            if len(uploads) > 1:
                raise field_error("image", "send one image; Darkroom edits one at a time", 400)
            upload = uploads[0]
            assert isinstance(upload, UploadFile)
            data = await upload.read(max_bytes + 1)
            fields: dict[str, str] = {}
            for key, value in form.multi_items():
                if key in IMAGE_FIELDS or key.startswith("svg["):  # svg[...]: OpenAI's, ignored
                    continue
                if not isinstance(value, str):
                    raise field_error(key, "unexpected file", 400)
                fields[key] = value
    except MultiPartException as exc:
        raise ApiError(
            400, "invalid_form", f"The multipart body could not be read: {exc.message}"
        ) from None
    if len(data) > max_bytes:
        raise field_error("image", f"the file is larger than {max_bytes} bytes", 413)
    try:
        parsed = ImageEditForm.model_validate({k: v for k, v in fields.items() if v != ""})
    except ValidationError as exc:
        raise from_validation(exc) from None
    size = await _inspect(data, svc.settings.max_input_pixels)
    return parsed, data, size


async def _inspect(data: bytes, max_pixels: int) -> tuple[int, int]:
    return await asyncio.to_thread(inspect_image, data, field="image", max_pixels=max_pixels)


async def _answer(
    request: Request,
    svc: Services,
    job_ids: list[str],
    response_format: ResponseFormat | None,
    size: tuple[int, int],
    admit: Admission,
) -> Response:
    started = time.monotonic()
    structlog.contextvars.bind_contextvars(job_ids=job_ids)
    try:
        records = await wait_for_jobs(
            request,
            svc.jobs,
            svc.fanout,
            job_ids,
            tenant=tenant_of(request).name,
            resync_s=svc.settings.sse_resync_s,
        )
    except ClientGone:
        log.info("openai.client_gone", jobs=len(job_ids))
        return Response(status_code=499)  # nobody reads it; for the access log
    except KeyRevoked:
        raise ApiError(
            401, "unauthorized", "The API key was revoked; the jobs were canceled."
        ) from None
    urls = _result_urls(records)
    if response_format == "b64_json":
        reader = ResultReader(
            output_dir=svc.settings.output_dir if svc.settings.storage == "local" else None,
            public_base_url=svc.settings.public_base_url,
        )
        data = [ImageData(b64_json=base64.b64encode(await reader.read(u)).decode()) for u in urls]
    else:
        data = [ImageData(url=u) for u in urls]
    body = ImagesResponse(created=int(time.time()), data=data, size=f"{size[0]}x{size[1]}")
    log.info(
        "openai.answered",
        jobs=len(job_ids),
        images=len(data),
        response_format=response_format or "url",
        wait_ms=round((time.monotonic() - started) * 1000),
    )
    return JSONResponse(body.model_dump(exclude_none=True), headers=admit.headers)


def _result_urls(records: list[JobRecord | None]) -> list[str]:
    """Every result URL, job by job; the first job that did not complete, as an error."""
    for record in records:
        if record is None:
            raise ApiError(500, "job_expired", "A job expired before its result was read.")
        if record.status == JobStatus.FAILED and record.error == DEADLINE_EXCEEDED:
            raise ApiError(
                408,
                "deadline_exceeded",
                f"The images were not finished within the {CANCEL_AFTER_HEADER} deadline; the "
                "jobs were stopped.",
                headers=NO_RETRY,
            )
        if record.status == JobStatus.FAILED:
            raise ApiError(
                500, "render_failed", f"A render failed: {record.error}", headers=NO_RETRY
            )
    for record in records:
        assert record is not None
        if record.status == JobStatus.CANCELED:
            raise ApiError(
                409,
                "job_canceled",
                f"Job {record.job_id} was canceled ({record.message}); no images.",
                headers=NO_RETRY,
            )
    return [url for record in records if record is not None for url in record.result_urls]


@operation(
    summary="List the image models (OpenAI Images API)",
    tag="openai",
    responses={200: OpenAIModelList},
    error_model=OpenAIError,
    description="The model routes that generate or edit images, as OpenAI models.",
)
async def models(request: Request) -> JSONResponse:
    routes = sorted(_image_routes(services(request)), key=lambda r: r.name)
    body = OpenAIModelList(
        data=[OpenAIModel(id=r.name, created=STARTED_AT, owned_by="darkroom") for r in routes]
    )
    return JSONResponse(body.model_dump())


routes = [
    Route("/v1/images/generations", generations, methods=["POST"]),
    Route("/v1/images/edits", edits, methods=["POST"]),
    Route("/v1/models", models, methods=["GET"]),
]
