"""A job's webhook delivery log and redeliveries: ``GET …/webhooks`` lists every delivery with
every attempt; ``POST …/webhooks/{delivery_id}/redeliver`` sends one again, with the same
``webhook-id``. Under both seed APIs' job paths, with the job's isolation rules: the delivery
records name their tenant, and outlive the job's record."""

from __future__ import annotations

import time

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from common.webhooks import Deliveries, Delivery, StoredDelivery
from gateway.auth import may_see, tenant_of
from gateway.errors import ApiError, not_found
from gateway.openapi import operation
from gateway.services import services


class WebhookLog(BaseModel):
    """A job's webhook deliveries, oldest first, each with every attempt."""

    job_id: str
    deliveries: list[Delivery]


def _public(delivery: StoredDelivery) -> Delivery:
    return Delivery.model_validate(delivery.model_dump(exclude={"tenant", "payload"}))


async def _deliveries(request: Request, param: str) -> tuple[str, list[StoredDelivery]]:
    """The job's deliveries, if the caller may see the job; else 404 as for an unknown job."""
    job_id = request.path_params[param]
    svc = services(request)
    found = await Deliveries(svc.redis, svc.keys).for_job(job_id)
    tenant = tenant_of(request)
    if found:
        if not (tenant.admin or all(d.tenant == tenant.name for d in found)):
            raise not_found("job", job_id)
        return job_id, found
    record = await svc.jobs.get(job_id)
    if record is None or not may_see(tenant, record):
        raise not_found("job", job_id)
    return job_id, []


async def _log(request: Request, param: str) -> JSONResponse:
    job_id, found = await _deliveries(request, param)
    body = WebhookLog(job_id=job_id, deliveries=[_public(d) for d in found])
    return JSONResponse(body.model_dump(mode="json"))


async def _redeliver(request: Request, param: str) -> JSONResponse:
    job_id, found = await _deliveries(request, param)
    wanted = request.path_params["delivery_id"]
    delivery = next((d for d in found if d.id == wanted), None)
    if delivery is None:
        raise ApiError(404, "not_found", f"Job {job_id!r} has no webhook delivery {wanted!r}.")
    svc = services(request)
    store = Deliveries(svc.redis, svc.keys)
    if not await store.redeliver(delivery.id, time.time()):
        raise ApiError(404, "not_found", f"Webhook delivery {wanted!r} has expired.")
    again = await store.get(delivery.id)
    return JSONResponse(_public(again or delivery).model_dump(mode="json"), status_code=202)


LOG_HELP = (
    "Each delivery (its `id` is the `webhook-id` header), its state (pending, delivered, "
    "failed, blocked) and every attempt: time, status code, duration, error. Kept for the whole "
    "retry schedule plus a day, after the job itself has expired."
)
REDELIVER_HELP = (
    "Sends the delivery once more, now, with the same `webhook-id` and payload (and a fresh "
    "timestamp and signature). 202: queued for the notifier; the log shows the attempt."
)


@operation(
    summary="A job's webhook deliveries (seed 1)",
    tag="api",
    responses={200: WebhookLog},
    description=LOG_HELP,
)
async def session_webhooks(request: Request) -> JSONResponse:
    return await _log(request, "session_id")


@operation(
    summary="A job's webhook deliveries (seed 2)",
    tag="v1",
    responses={200: WebhookLog},
    description=LOG_HELP,
)
async def v1_job_webhooks(request: Request) -> JSONResponse:
    return await _log(request, "job_id")


@operation(
    summary="Send a webhook delivery again (seed 1)",
    tag="api",
    responses={202: Delivery},
    description=REDELIVER_HELP,
)
async def session_redeliver(request: Request) -> JSONResponse:
    return await _redeliver(request, "session_id")


@operation(
    summary="Send a webhook delivery again (seed 2)",
    tag="v1",
    responses={202: Delivery},
    description=REDELIVER_HELP,
)
async def v1_job_redeliver(request: Request) -> JSONResponse:
    return await _redeliver(request, "job_id")


routes = [
    Route("/api/{session_id}/webhooks", session_webhooks, methods=["GET"]),
    Route(
        "/api/{session_id}/webhooks/{delivery_id}/redeliver", session_redeliver, methods=["POST"]
    ),
    Route("/v1/jobs/{job_id}/webhooks", v1_job_webhooks, methods=["GET"]),
    Route("/v1/jobs/{job_id}/webhooks/{delivery_id}/redeliver", v1_job_redeliver, methods=["POST"]),
]
