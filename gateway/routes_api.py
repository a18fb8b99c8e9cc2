"""Seed 1's submit API: ``POST /api/{model}/t2i`` (JSON) and ``/i2i`` (multipart)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from common.schemas import ImageToImageForm, SubmitResponse, Task, TextToImageRequest
from gateway.bodies import read_image_form, read_json
from gateway.images import fit_to_route
from gateway.openapi import operation
from gateway.services import services
from gateway.submit import SUBMITTED_MESSAGE


def _submitted(job_id: str) -> JSONResponse:
    body = SubmitResponse(session_id=job_id, message=SUBMITTED_MESSAGE)
    return JSONResponse(body.model_dump(mode="json"))


@operation(
    summary="Submit a text-to-image job",
    tag="api",
    json_body=TextToImageRequest,
    responses={200: SubmitResponse},
)
async def text_to_image(request: Request) -> JSONResponse:
    svc = services(request)
    model = request.path_params["model"]
    svc.submitter.route(model, Task.T2I)  # an unknown model is a 404 before the body is read
    body = await read_json(request, TextToImageRequest, max_bytes=svc.settings.max_json_bytes)
    return _submitted(await svc.submitter.text_to_image(model, body))


@operation(
    summary="Submit an image-to-image job",
    tag="api",
    form_body=ImageToImageForm,
    file_field="image",
    responses={200: SubmitResponse},
    description="The output has the input's aspect ratio, scaled to the model's limits.",
)
async def image_to_image(request: Request) -> JSONResponse:
    svc = services(request)
    model = request.path_params["model"]
    route = svc.submitter.route(model, Task.I2I)
    form, image, (width, height) = await read_image_form(
        request,
        ImageToImageForm,
        file_field="image",
        max_upload_bytes=svc.settings.max_upload_bytes,
        max_pixels=svc.settings.max_input_pixels,
    )
    job_id = await svc.submitter.image_to_image(
        model, form, image, fit_to_route(width, height, route)
    )
    return _submitted(job_id)


routes = [
    Route("/api/{model}/t2i", text_to_image, methods=["POST"]),
    Route("/api/{model}/i2i", image_to_image, methods=["POST"]),
]
