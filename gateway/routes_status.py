"""The status service: job status reads and SSE feeds for both seed APIs, and the health check.

``darkroom status`` serves these routes alone so they can scale apart from submission.
"""

from __future__ import annotations

import functools

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from common.queue_position import QueuePosition, position
from common.redis_errors import REDIS_TRANSIENT
from common.schemas import Health, JobRecord, JobStatusResponse, SessionStatus
from gateway.auth import may_see, tenant_of
from gateway.errors import field_error, not_found
from gateway.feed import job_feed
from gateway.job_tokens import JobToken
from gateway.openapi import operation
from gateway.services import Services, services
from gateway.workers import live_workers

LAST_EVENT_ID_HELP = "Resume a feed: only events with a greater sequence number are sent."
# Sequence numbers are Redis integers: signed 64-bit.
MAX_EVENT_ID = 2**63 - 1


@operation(
    summary="Health: the server and its Redis connection",
    tag="health",
    responses={200: Health, 503: Health},
    public=True,
)
async def health(request: Request) -> JSONResponse:
    try:
        await services(request).redis.ping()
        redis_state = "connected"
    except REDIS_TRANSIENT:
        redis_state = "disconnected"
    body = Health(
        status="ok" if redis_state == "connected" else "degraded",
        service="darkroom",
        redis=redis_state,
    )
    return JSONResponse(body.model_dump(), status_code=200 if redis_state == "connected" else 503)


async def _record(request: Request, param: str) -> JobRecord:
    job_id = request.path_params[param]
    record = await services(request).jobs.get(job_id)
    # Another tenant's job answers exactly as an unknown one: its existence is not told.
    if record is None or not may_see(tenant_of(request), record):
        raise not_found("job", job_id)
    return record


async def _queue_position(svc: Services, record: JobRecord) -> QueuePosition | None:
    return await position(
        svc.redis,
        svc.keys,
        record,
        lambda: live_workers(svc.redis, svc.keys),
        aging_s=svc.settings.priority_aging_s,
    )


@operation(
    summary="Status of a job (seed 1)", tag="api", responses={200: SessionStatus}, job_token=True
)
async def session_status(request: Request) -> JSONResponse:
    record = await _record(request, "session_id")
    # Seed 1's fields stay exactly its own: a waiting job's place is told in its message.
    queued = await _queue_position(services(request), record)
    body = SessionStatus(
        session_id=record.job_id,
        status=record.status,
        progress=record.progress,
        message=record.message if queued is None else queued.describe(),
        result_url=record.result_urls[0] if record.result_urls else None,
        error=record.error,
        result_urls=record.result_urls if len(record.result_urls) > 1 else None,
    )
    return JSONResponse(body.to_json())


@operation(
    summary="Status of a job (seed 2)", tag="v1", responses={200: JobStatusResponse}, job_token=True
)
async def v1_job(request: Request) -> JSONResponse:
    record = await _record(request, "job_id")
    queued = await _queue_position(services(request), record)
    body = JobStatusResponse(
        job_id=record.job_id,
        status=record.status.v1,
        result_urls=record.result_urls or None,
        seed=record.params.seed,
        error=record.error,
        queue_position=None if queued is None else queued.ahead,
        eta_s=None if queued is None else queued.eta_s,
    )
    return JSONResponse(body.model_dump(mode="json"))


def last_event_id_of(request: Request) -> int | None:
    raw = request.headers.get("last-event-id") or request.query_params.get("last_event_id")
    if raw is None or raw == "":
        return None
    # isdigit() alone takes '²' and '١٢'; and a longer string is past any id (and int() of a
    # very long one raises).
    if raw.isascii() and raw.isdigit() and len(raw.lstrip("0")) <= len(str(MAX_EVENT_ID)):
        value = int(raw)
        if value <= MAX_EVENT_ID:
            return value
    raise field_error("Last-Event-ID", f"{raw!r} is not an event id (an integer from 0 to 2^63-1)")


async def _feed(request: Request, param: str) -> Response:
    last_event_id = last_event_id_of(request)
    record = await _record(request, param)
    if last_event_id is not None and last_event_id >= record.seq:
        if record.status.terminal:
            # Nothing will follow: 204 is what tells EventSource to stop reconnecting.
            return Response(status_code=204)
        if last_event_id > record.seq:
            last_event_id = None  # an id this job never sent: start again from its state
    svc = services(request)
    events = job_feed(
        record.job_id,
        last_event_id,
        svc.jobs,
        svc.fanout,
        # Revoking the owner's key ends a feed followed with the job's token too.
        tenant=record.tenant if tenant_of(request).job_id else tenant_of(request).name,
        ping_s=svc.settings.sse_ping_s,
        resync_s=svc.settings.sse_resync_s,
        queue=functools.partial(_queue_position, svc, record),
        previews=svc.previews,
        record=record,
    )
    return svc.feeds.stream(events)


@operation(
    summary="Live progress of a job as Server-Sent Events (seed 1)",
    tag="api",
    sse=True,
    headers={"Last-Event-ID": LAST_EVENT_ID_HELP},
    job_token=True,
)
async def session_events(request: Request) -> Response:
    return await _feed(request, "session_id")


@operation(
    summary="Live progress of a job as Server-Sent Events (seed 2)",
    tag="v1",
    sse=True,
    headers={"Last-Event-ID": LAST_EVENT_ID_HELP},
    job_token=True,
)
async def v1_job_events(request: Request) -> Response:
    return await _feed(request, "job_id")


@operation(
    summary="A job's read-only token, for pages that follow it",
    tag="v1",
    responses={200: JobToken},
    description="The token opens this job's status and events routes as `?token=`, and nothing "
    "else; every submit returns it in the `Darkroom-Job-Token` header too. For the job's owner "
    "(or an admin).",
)
async def job_token(request: Request) -> JSONResponse:
    record = await _record(request, "job_id")
    token = await services(request).job_tokens.issue(record.job_id)
    return JSONResponse(JobToken(job_id=record.job_id, token=token).model_dump())


routes = [
    Route("/", health, methods=["GET"]),
    Route("/api/{session_id}/status", session_status, methods=["GET"]),
    Route("/api/{session_id}/events", session_events, methods=["GET"]),
    Route("/v1/jobs/{job_id}", v1_job, methods=["GET"]),
    Route("/v1/jobs/{job_id}/events", v1_job_events, methods=["GET"]),
    Route("/v1/jobs/{job_id}/token", job_token, methods=["GET"]),
]
