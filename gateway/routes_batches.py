"""Batches over HTTP: ``POST /api/{model}/batch`` and ``/v1/batches`` queue many jobs at once;
``/api/batches/{batch_id}`` (and ``/v1/batches/{batch_id}``) read, watch and cancel them.

A batch's items are ordinary jobs: each has its own status, feed, webhook and cancel at the job
routes. Another tenant's batch answers 404, exactly like an unknown one.
"""

from __future__ import annotations

from pydantic import BaseModel, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from common.batches import BatchRecord, BatchState, BatchStatus
from common.schemas import ErrorResponse, JobStatus, RenderParams, SubmitRequest, Task
from gateway.auth import may_see_batch, tenant_of
from gateway.batch_feed import batch_feed
from gateway.batch_submit import (
    ApiBatchRequest,
    SubmittedBatch,
    V1BatchRequest,
    item_error,
    read_batch,
    submit_batch,
)
from gateway.errors import ApiError, not_found
from gateway.idempotency import HEADER as IDEMPOTENCY_HEADER
from gateway.idempotency import replay_headers
from gateway.openapi import operation
from gateway.quotas import RATE_HEADERS_DOCS
from gateway.routes_cancel import CANCELED_MESSAGE
from gateway.routes_status import LAST_EVENT_ID_HELP, last_event_id_of
from gateway.services import services
from gateway.submit import CANCEL_AFTER_HEADER, SUBMIT_ERRORS, SUBMIT_HEADERS, admission

# --- answers ------------------------------------------------------------------------------


class BatchSubmitted(BaseModel):
    """Seed 1's answer to a batch: one session per request, in request order."""

    batch_id: str
    session_ids: list[str]


class V1BatchSubmitted(BaseModel):
    """Seed 2's answer to a batch: one job per request, in request order."""

    batch_id: str
    job_ids: list[str]


class BatchCounts(BaseModel):
    """How many of the batch's jobs are in each state."""

    pending: int
    processing: int
    completed: int
    failed: int
    canceled: int


class BatchJob(BaseModel):
    """One job of a batch, as ``GET /api/{session_id}/status`` shows it."""

    session_id: str
    status: JobStatus
    progress: int
    result_url: str | None
    error: str | None = None
    result_urls: list[str] | None = Field(
        default=None, description="Every result, in order, when there are several."
    )


class BatchView(BaseModel):
    """Seed 1: ``GET /api/batches/{batch_id}``, and each event of its feed."""

    batch_id: str
    status: BatchStatus = Field(
        description="pending, processing, completed, failed or canceled when every job is, or "
        "partial when they ended differently."
    )
    total: int
    counts: BatchCounts
    progress: int = Field(description="0–100 over the whole batch; an ended job counts as done.")
    jobs: list[BatchJob] = Field(description="In request order.")


class V1BatchCounts(BaseModel):
    """How many of the batch's jobs are in each state, by seed 2's names."""

    PENDING: int
    STARTED: int
    SUCCESS: int
    FAILURE: int
    REVOKED: int


class V1BatchJob(BaseModel):
    """One job of a batch, as ``GET /v1/jobs/{job_id}`` shows it."""

    job_id: str
    status: str = Field(description="PENDING, STARTED, SUCCESS, FAILURE or REVOKED")
    result_urls: list[str] | None
    seed: int | None = None
    error: str | None = None


class V1BatchView(BaseModel):
    """Seed 2: ``GET /v1/batches/{batch_id}``."""

    batch_id: str
    status: str = Field(
        description="PENDING, STARTED, SUCCESS, FAILURE or REVOKED when every job is, or "
        "PARTIAL when they ended differently."
    )
    total: int
    counts: V1BatchCounts
    progress: int = Field(description="0–100 over the whole batch; an ended job counts as done.")
    jobs: list[V1BatchJob] = Field(description="In request order.")


def api_view(state: BatchState) -> BatchView:
    counts = state.counts()
    return BatchView(
        batch_id=state.batch.batch_id,
        status=state.status,
        total=len(state.items),
        counts=BatchCounts(**{status.value: n for status, n in counts.items()}),
        progress=state.progress,
        jobs=[
            BatchJob(
                session_id=item.job_id,
                status=item.status,
                progress=item.progress,
                result_url=item.result_urls[0] if item.result_urls else None,
                error=item.error,
                result_urls=item.result_urls if len(item.result_urls) > 1 else None,
            )
            for item in state.items
        ],
    )


def v1_view(state: BatchState) -> V1BatchView:
    counts = state.counts()
    return V1BatchView(
        batch_id=state.batch.batch_id,
        status=state.status.v1,
        total=len(state.items),
        counts=V1BatchCounts(**{status.v1: n for status, n in counts.items()}),
        progress=state.progress,
        jobs=[
            V1BatchJob(
                job_id=item.job_id,
                status=item.status.v1,
                result_urls=item.result_urls or None,
                seed=item.params.seed,
                error=item.error,
            )
            for item in state.items
        ],
    )


# --- submit -------------------------------------------------------------------------------

BATCH_SUBMIT_HEADERS = {
    **SUBMIT_HEADERS,
    IDEMPOTENCY_HEADER: "Up to 255 characters. The same key with the same batch again returns "
    "the original batch (same ids, status 200, `Idempotent-Replayed: true`) and queues nothing; "
    "the same key with another request is a 409; a replay after the batch expired is a 410.",
    CANCEL_AFTER_HEADER: "Seconds: every job of the batch not finished this long after "
    "submission fails with `deadline exceeded`.",
}
BATCH_STATUS_DOCS = {
    422: "The body or one of its requests is invalid (`fields` names it: "
    "`requests[<index>].<field>`), or one costs more than the API key's `max_cost`. The whole "
    "batch was refused; nothing was queued.",
    429: "Nothing was queued: the API key's submit rate (a batch is one request), its jobs "
    "queued or running at once (a batch of N is N jobs: `max_queued_exceeded` when they do not "
    "all fit), or the model's queue (`queue_full`, likewise). Retry after the Retry-After "
    "header's seconds.",
}
BATCH_RESPONSE_HEADERS = {
    **RATE_HEADERS_DOCS,
    "Retry-After": "On a 429: the seconds to wait before retrying.",
}
_BATCH_DOC = (
    "Each job is an ordinary job (its own status, events, webhook and cancel) and the jobs are "
    "queued together, so workers render compatible ones in one batch. A batch counts as one "
    "request for the API key's rate and as one job per request for its `max_queued`."
)


def _headers(submitted: SubmittedBatch) -> dict[str, str]:
    return submitted.headers | (replay_headers(submitted.replayed) or {})


@operation(
    summary="Submit a batch of text-to-image jobs",
    tag="api",
    json_body=ApiBatchRequest,
    responses={200: BatchSubmitted, **SUBMIT_ERRORS},
    headers=BATCH_SUBMIT_HEADERS,
    response_headers=BATCH_RESPONSE_HEADERS,
    status_docs=BATCH_STATUS_DOCS,
    description=_BATCH_DOC,
)
async def submit_api_batch(request: Request) -> JSONResponse:
    svc = services(request)
    model = request.path_params["model"]
    route = svc.submitter.route(model, Task.T2I)  # an unknown model is a 404 before the body
    admit = await admission(request, svc)
    body = await read_batch(request, ApiBatchRequest, max_bytes=svc.settings.max_json_bytes)
    items: list[tuple[RenderParams, SubmitRequest]] = []
    for index, item in enumerate(body.requests):
        try:
            items.append((svc.submitter.t2i_params(model, item)[1], item))
        except ApiError as exc:
            raise item_error(index, exc) from None
    submitted = await submit_batch(svc, route, items, body, admission=admit, api="api")
    answer = BatchSubmitted(batch_id=submitted.batch_id, session_ids=submitted.job_ids)
    return JSONResponse(answer.model_dump(), headers=_headers(submitted))


@operation(
    summary="Submit a batch of generate requests",
    tag="v1",
    json_body=V1BatchRequest,
    responses={200: V1BatchSubmitted, **SUBMIT_ERRORS},
    headers=BATCH_SUBMIT_HEADERS,
    response_headers=BATCH_RESPONSE_HEADERS,
    status_docs=BATCH_STATUS_DOCS,
    description=_BATCH_DOC,
)
async def submit_v1_batch(request: Request) -> JSONResponse:
    svc = services(request)
    admit = await admission(request, svc)
    body = await read_batch(request, V1BatchRequest, max_bytes=svc.settings.max_json_bytes)
    route = svc.submitter.route(svc.catalog.v1_route, Task.T2I)
    items: list[tuple[RenderParams, SubmitRequest]] = []
    for index, item in enumerate(body.requests):
        try:
            items.append((svc.submitter.generate_params(item)[1], item))
        except ApiError as exc:
            raise item_error(index, exc) from None
    submitted = await submit_batch(svc, route, items, body, admission=admit, api="v1")
    answer = V1BatchSubmitted(batch_id=submitted.batch_id, job_ids=submitted.job_ids)
    return JSONResponse(answer.model_dump(), headers=_headers(submitted))


# --- read, watch, cancel ------------------------------------------------------------------


async def _batch(request: Request) -> BatchRecord:
    batch_id = request.path_params["batch_id"]
    batch = await services(request).batches.get(batch_id)
    # Another tenant's batch answers exactly as an unknown one: its existence is not told.
    if batch is None or not may_see_batch(tenant_of(request), batch.tenant):
        raise not_found("batch", batch_id)
    return batch


async def _state(request: Request) -> BatchState:
    batch = await _batch(request)
    state = await services(request).batches.state(batch)
    if state is None:
        raise not_found("batch", batch.batch_id)
    return state


@operation(summary="Status of a batch (seed 1)", tag="api", responses={200: BatchView})
async def api_batch(request: Request) -> JSONResponse:
    return JSONResponse(api_view(await _state(request)).model_dump(mode="json"))


@operation(summary="Status of a batch (seed 2)", tag="v1", responses={200: V1BatchView})
async def v1_batch(request: Request) -> JSONResponse:
    return JSONResponse(v1_view(await _state(request)).model_dump(mode="json"))


@operation(
    summary="Live status of a batch as Server-Sent Events",
    tag="api",
    sse=True,
    sse_model=BatchView,
    sse_docs={
        200: "Server-Sent Events. Each event is the whole batch (`data:` a BatchView), sent "
        "when any of its jobs changed (at most five a second); `id:` grows with every change. "
        "The first is the batch's current state (with Last-Event-ID: only if it changed since); "
        "the stream ends after the event in which every job has ended. Comment lines are sent "
        "as heartbeats.",
        204: "Last-Event-ID is at or past the last event of a batch whose jobs have all ended: "
        "nothing more will come, and EventSource stops reconnecting.",
    },
    headers={"Last-Event-ID": LAST_EVENT_ID_HELP},
)
async def api_batch_events(request: Request) -> Response:
    last_event_id = last_event_id_of(request)
    state = await _state(request)
    if last_event_id is not None and last_event_id >= state.seq:
        if state.status.terminal:
            return Response(status_code=204)  # nothing will follow
        if last_event_id > state.seq:
            last_event_id = None  # an id this batch never sent: start again from its state
    svc = services(request)
    frames = batch_feed(
        state.batch,
        last_event_id,
        svc.batches,
        svc.fanout,
        api_view,
        tenant=tenant_of(request).name,
        ping_s=svc.settings.sse_ping_s,
        resync_s=svc.settings.sse_resync_s,
    )
    return svc.feeds.stream(frames)


async def _cancel(request: Request) -> BatchState:
    """Cancel every job of the batch that has not ended; a 409 when none was left."""
    svc = services(request)
    state = await _state(request)
    canceled = 0
    for item in state.items:
        if item.status.terminal:
            continue
        event = await svc.jobs.emit(
            item.job_id, status=JobStatus.CANCELED, message=CANCELED_MESSAGE
        )
        canceled += event is not None  # else it ended meanwhile
    after = await svc.batches.state(state.batch)
    if after is None:
        raise not_found("batch", state.batch.batch_id)
    if not canceled:
        raise ApiError(
            409,
            "batch_finished",
            f"Every job of batch {state.batch.batch_id!r} has already ended "
            f"({after.status.value}); nothing to cancel.",
        )
    return after


@operation(
    summary="Cancel a batch (seed 1): every job of it not yet ended",
    tag="api",
    responses={200: BatchView, 409: ErrorResponse},
    description="Queued jobs never render; running ones stop at their next step; finished ones "
    "keep their results. The answer is the batch afterwards (`canceled`, or `partial` when some "
    "jobs had ended otherwise). 409 when every job had already ended.",
)
async def cancel_api_batch(request: Request) -> JSONResponse:
    return JSONResponse(api_view(await _cancel(request)).model_dump(mode="json"))


@operation(
    summary="Cancel a batch (seed 2): every job of it not yet ended",
    tag="v1",
    responses={200: V1BatchView, 409: ErrorResponse},
    description="As DELETE /api/batches/{batch_id}, answered in seed 2's names.",
)
async def cancel_v1_batch(request: Request) -> JSONResponse:
    return JSONResponse(v1_view(await _cancel(request)).model_dump(mode="json"))


# The status service serves the reads; the gateway everything.
read_routes = [
    Route("/api/batches/{batch_id}", api_batch, methods=["GET"]),
    Route("/api/batches/{batch_id}/events", api_batch_events, methods=["GET"]),
    Route("/v1/batches/{batch_id}", v1_batch, methods=["GET"]),
]
submit_routes = [
    Route("/api/{model}/batch", submit_api_batch, methods=["POST"]),
    Route("/api/batches/{batch_id}", cancel_api_batch, methods=["DELETE"]),
    Route("/v1/batches", submit_v1_batch, methods=["POST"]),
    Route("/v1/batches/{batch_id}/cancel", cancel_v1_batch, methods=["POST"]),
]
