"""Seed 1's API: ``POST /api/{model}/t2i|t2v`` (JSON), ``/i2i|i2v`` (multipart with an image),
and ``GET /api/models``."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, RootModel
from redis.asyncio import Redis
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from common.catalog import ModelRoute
from common.keys import Keys
from common.schemas import (
    ImageToImageForm,
    ImageToVideoForm,
    ModelInfo,
    SubmitResponse,
    Task,
    TextToImageRequest,
    TextToVideoRequest,
)
from gateway.bodies import read_image_form, read_json
from gateway.images import fit_to_route
from gateway.openapi import operation
from gateway.services import services
from gateway.submit import (
    SUBMIT_ERRORS,
    SUBMIT_HEADERS,
    SUBMIT_RESPONSE_HEADERS,
    SUBMIT_STATUS_DOCS,
    SUBMITTED_MESSAGE,
    Submitted,
    admission,
    submitted_headers,
)
from gateway.workers import live_workers


async def _submitted(request: Request, submitted: Submitted) -> JSONResponse:
    body = SubmitResponse(session_id=submitted.job_id, message=SUBMITTED_MESSAGE)
    headers = await submitted_headers(services(request).job_tokens, submitted)
    return JSONResponse(body.model_dump(mode="json"), headers=headers)


async def _json_job(request: Request, task: Task, model_cls: type[BaseModel]) -> Submitted:
    svc = services(request)
    model = request.path_params["model"]
    svc.submitter.route(model, task)  # an unknown model is a 404 before the body is read
    admit = await admission(request, svc)
    body: Any = await read_json(request, model_cls, max_bytes=svc.settings.max_json_bytes)
    if task == Task.T2V:
        return await svc.submitter.text_to_video(model, body, admission=admit)
    return await svc.submitter.text_to_image(model, body, admission=admit)


async def _form_job(request: Request, task: Task, form_cls: type[BaseModel]) -> Submitted:
    svc = services(request)
    model = request.path_params["model"]
    route = svc.submitter.route(model, task)
    admit = await admission(request, svc)
    form: Any
    form, image, (width, height) = await read_image_form(
        request,
        form_cls,
        file_field="image",
        max_upload_bytes=svc.settings.max_upload_bytes,
        max_pixels=svc.settings.max_input_pixels,
    )
    size = fit_to_route(width, height, route)
    if task == Task.I2V:
        return await svc.submitter.image_to_video(model, form, image, size, admission=admit)
    return await svc.submitter.image_to_image(model, form, image, size, admission=admit)


@operation(
    summary="Submit a text-to-image job",
    tag="api",
    json_body=TextToImageRequest,
    responses={200: SubmitResponse, **SUBMIT_ERRORS},
    headers=SUBMIT_HEADERS,
    response_headers=SUBMIT_RESPONSE_HEADERS,
    status_docs=SUBMIT_STATUS_DOCS,
    description="Multi-angle models return one image per angle (`result_urls`).",
)
async def text_to_image(request: Request) -> JSONResponse:
    return await _submitted(request, await _json_job(request, Task.T2I, TextToImageRequest))


@operation(
    summary="Submit an image-to-image job",
    tag="api",
    form_body=ImageToImageForm,
    file_field="image",
    responses={200: SubmitResponse, **SUBMIT_ERRORS},
    headers=SUBMIT_HEADERS,
    response_headers=SUBMIT_RESPONSE_HEADERS,
    status_docs=SUBMIT_STATUS_DOCS,
    description="The output has the input's aspect ratio, scaled to the model's limits. "
    "Multi-angle models return one image per angle (`result_urls`).",
)
async def image_to_image(request: Request) -> JSONResponse:
    return await _submitted(request, await _form_job(request, Task.I2I, ImageToImageForm))


@operation(
    summary="Submit a text-to-video job",
    tag="api",
    json_body=TextToVideoRequest,
    responses={200: SubmitResponse, **SUBMIT_ERRORS},
    headers=SUBMIT_HEADERS,
    response_headers=SUBMIT_RESPONSE_HEADERS,
    status_docs=SUBMIT_STATUS_DOCS,
    description="The result is an H.264 MP4. Omitted fields take the model's defaults "
    "(see GET /api/models).",
)
async def text_to_video(request: Request) -> JSONResponse:
    return await _submitted(request, await _json_job(request, Task.T2V, TextToVideoRequest))


@operation(
    summary="Submit an image-to-video job",
    tag="api",
    form_body=ImageToVideoForm,
    file_field="image",
    responses={200: SubmitResponse, **SUBMIT_ERRORS},
    headers=SUBMIT_HEADERS,
    response_headers=SUBMIT_RESPONSE_HEADERS,
    status_docs=SUBMIT_STATUS_DOCS,
    description="The image is the first frame; the video keeps its aspect ratio, scaled to the "
    "model's limits. The result is an H.264 MP4.",
)
async def image_to_video(request: Request) -> JSONResponse:
    return await _submitted(request, await _form_job(request, Task.I2V, ImageToVideoForm))


class ModelList(RootModel[list[ModelInfo]]):
    """Every model route: family, tasks, defaults, limits, and whether a worker has it loaded
    (or could not load it)."""


def _info(
    route: ModelRoute,
    loaded: dict[str, int],
    serving: set[str],
    failed: dict[str, str],
    queued: dict[str, int],
) -> ModelInfo:
    return ModelInfo(
        name=route.name,
        family=route.family,
        weights=route.weights,
        tasks=[task.value for task in route.tasks],
        defaults=route.defaults.model_dump(),
        limits={
            "max_width": route.max_width,
            "max_height": route.max_height,
            "size_multiple": route.size_multiple,
            "min_steps": route.min_steps,
            "max_steps": route.max_steps,
            "max_frames": route.max_frames,
            "frame_multiple": route.frame_multiple,
        },
        default_angles=route.default_angles,
        loaded=loaded.get(route.name, 0) > 0,
        workers_loaded=loaded.get(route.name, 0),
        served=route.name in serving,
        load_error=failed.get(route.name),
        queued=queued[route.name],
    )


async def _queue_depths(redis: Redis, keys: Keys, names: list[str]) -> dict[str, int]:
    """Each route's backlog: its jobs waiting plus those in flight (ended ones leave it)."""
    async with redis.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.xlen(keys.backlog(name))
        depths: list[int] = await pipe.execute()
    return dict(zip(names, depths, strict=True))


@operation(summary="List the model routes", tag="api", responses={200: ModelList})
async def models(request: Request) -> JSONResponse:
    svc = services(request)
    workers = await live_workers(svc.redis, svc.keys)
    loaded: dict[str, int] = {}
    serving: set[str] = set()
    failed: dict[str, str] = {}
    for worker in workers:
        serving.update(name for name in worker.routes if name not in worker.failed)
        failed.update(worker.failed)
        for name in worker.loaded:
            loaded[name] = loaded.get(name, 0) + 1
    queued = await _queue_depths(svc.redis, svc.keys, list(svc.catalog.routes))
    listed = svc.catalog.routes.values()
    body = ModelList([_info(r, loaded, serving, failed, queued) for r in listed])
    return JSONResponse(body.model_dump(mode="json"))


routes = [
    Route("/api/models", models, methods=["GET"]),
    Route("/api/{model}/t2i", text_to_image, methods=["POST"]),
    Route("/api/{model}/i2i", image_to_image, methods=["POST"]),
    Route("/api/{model}/t2v", text_to_video, methods=["POST"]),
    Route("/api/{model}/i2v", image_to_video, methods=["POST"]),
]
