"""Seed 2's submit API: ``POST /v1/generate`` with a style preset, and the list of presets."""

from __future__ import annotations

from pydantic import RootModel
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from common.catalog import StylePreset
from common.schemas import GenerateRequest, GenerateResponse
from gateway.bodies import read_json
from gateway.openapi import operation
from gateway.services import services
from gateway.submit import (
    SUBMIT_ERRORS,
    SUBMIT_HEADERS,
    SUBMIT_RESPONSE_HEADERS,
    SUBMIT_STATUS_DOCS,
    admission,
    submitted_headers,
)


class StyleList(RootModel[list[StylePreset]]):
    """The style presets ``style_id`` selects from."""


@operation(
    summary="Generate an image from a prompt and a style preset",
    tag="v1",
    json_body=GenerateRequest,
    responses={200: GenerateResponse, **SUBMIT_ERRORS},
    headers=SUBMIT_HEADERS,
    response_headers=SUBMIT_RESPONSE_HEADERS,
    status_docs=SUBMIT_STATUS_DOCS,
    description="`seed=-1` picks a random seed; the seed used is reported by /v1/jobs/{job_id}.",
)
async def generate(request: Request) -> JSONResponse:
    svc = services(request)
    admit = await admission(request, svc)
    body = await read_json(request, GenerateRequest, max_bytes=svc.settings.max_json_bytes)
    submitted = await svc.submitter.generate(body, admission=admit)
    return JSONResponse(
        GenerateResponse(job_id=submitted.job_id).model_dump(),
        headers=await submitted_headers(svc.job_tokens, submitted),
    )


@operation(summary="List the style presets", tag="v1", responses={200: StyleList})
async def styles(request: Request) -> JSONResponse:
    presets = sorted(services(request).catalog.styles.values(), key=lambda s: s.id)
    return JSONResponse(StyleList(presets).model_dump())


routes = [
    Route("/v1/generate", generate, methods=["POST"]),
    Route("/v1/styles", styles, methods=["GET"]),
]
