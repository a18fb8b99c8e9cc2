"""Canceling jobs: ``DELETE /api/{session_id}`` (seed 1) and ``POST /v1/jobs/{job_id}/cancel``.

A queued job is never rendered; a running one stops at its next denoising step (the worker learns
it when its next progress update finds the job terminal) and its partial image is discarded.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from common.schemas import JobStatus, JobStatusResponse, SessionStatus
from gateway.auth import may_see, tenant_of
from gateway.errors import ApiError, not_found
from gateway.openapi import operation
from gateway.services import services

CANCELED_MESSAGE = "Canceled by request"


async def _cancel(request: Request, param: str) -> None:
    job_id = request.path_params[param]
    jobs = services(request).jobs
    owned = await jobs.get(job_id)
    # Another tenant's job answers exactly as an unknown one.
    if owned is None or not may_see(tenant_of(request), owned):
        raise not_found("job", job_id)
    if await jobs.emit(job_id, status=JobStatus.CANCELED, message=CANCELED_MESSAGE) is None:
        record = await jobs.get(job_id)
        if record is None:
            raise not_found("job", job_id)
        raise ApiError(
            409,
            "job_finished",
            f"Job {job_id!r} is already {record.status.value}; nothing to cancel.",
        )


@operation(summary="Cancel a job (seed 1)", tag="api", responses={200: SessionStatus})
async def cancel_session(request: Request) -> JSONResponse:
    await _cancel(request, "session_id")
    body = SessionStatus(
        session_id=request.path_params["session_id"],
        status=JobStatus.CANCELED,
        progress=0,
        message=CANCELED_MESSAGE,
        result_url=None,
        error=None,
    )
    record = await services(request).jobs.get(body.session_id)
    if record is not None:
        body.progress = record.progress
    return JSONResponse(body.to_json())


@operation(summary="Cancel a job (seed 2)", tag="v1", responses={200: JobStatusResponse})
async def cancel_v1_job(request: Request) -> JSONResponse:
    await _cancel(request, "job_id")
    body = JobStatusResponse(
        job_id=request.path_params["job_id"], status=JobStatus.CANCELED.v1, result_urls=None
    )
    return JSONResponse(body.model_dump(mode="json"))


routes = [
    Route("/api/{session_id}", cancel_session, methods=["DELETE"]),
    Route("/v1/jobs/{job_id}/cancel", cancel_v1_job, methods=["POST"]),
]
