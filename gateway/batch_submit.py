"""A batch request becomes queued jobs: every item checked as its own submit would be (an invalid
one refuses the whole batch, naming its index: ``requests[3].width``), then all of them written
in one script (``common.batches``) or none.

A batch is one request for the key's submit rate, N jobs for its ``max_queued`` and the route's
``max_queue`` (refused whole when they do not fit), and each item is checked against the key's
``max_cost``. One ``Idempotency-Key`` covers the whole batch.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, TypeVar

import structlog
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request

from common.batches import MAX_BATCH_ITEMS, BatchItem
from common.catalog import ModelRoute
from common.jobs import ClaimExpired, QueueFull, TenantQueueFull
from common.logging import get_logger
from common.schemas import (
    ErrorField,
    GenerateRequest,
    JobSpec,
    RenderParams,
    SeedApi,
    SubmitRequest,
    Task,
    TextToImageRequest,
    utcnow,
)
from common.tenants import Priority
from gateway.bodies import read_json
from gateway.errors import ApiError, not_found
from gateway.idempotency import fingerprint
from gateway.submit import QUEUE_FULL_RETRY_AFTER_S, SUBMITTED_MESSAGE, Admission

if TYPE_CHECKING:
    from gateway.services import Services

log = get_logger(__name__)

M = TypeVar("M", bound=BaseModel)

BATCH_PRIORITY: Priority = "low"

_ITEMS_DOC = (
    f"1 to {MAX_BATCH_ITEMS} requests, each exactly the body its single submit route takes. "
    "Every one is validated; one invalid item refuses the whole batch (`fields` names it as "
    "`requests[<index>].<field>`) and nothing is queued."
)


class ApiBatchRequest(BaseModel):
    """Seed 1: ``POST /api/{model}/batch``: text-to-image requests queued together."""

    model_config = ConfigDict(extra="forbid")

    requests: Annotated[
        list[TextToImageRequest],
        Field(min_length=1, max_length=MAX_BATCH_ITEMS, description=_ITEMS_DOC),
    ]


class V1BatchRequest(BaseModel):
    """Seed 2: ``POST /v1/batches``: ``/v1/generate`` requests queued together."""

    model_config = ConfigDict(extra="forbid")

    requests: Annotated[
        list[GenerateRequest],
        Field(min_length=1, max_length=MAX_BATCH_ITEMS, description=_ITEMS_DOC),
    ]


@dataclass(frozen=True)
class SubmittedBatch:
    batch_id: str
    job_ids: list[str]
    # An earlier request with the same Idempotency-Key made this batch; nothing new was queued.
    replayed: bool = False
    headers: dict[str, str] = field(default_factory=dict)


# pydantic's location ``requests.3.width`` as a person reads it: ``requests[3].width``.
_ITEM_LOCATION = re.compile(r"^requests\.(\d+)(?=\.|$)")


def _summary(fields: list[ErrorField]) -> str:
    return "; ".join(f"{f.field}: {f.message}" for f in fields)


async def read_batch(request: Request, model: type[M], *, max_bytes: int) -> M:
    """The batch body, validated whole; a 422 names each bad item by its index."""
    try:
        return await read_json(request, model, max_bytes=max_bytes)
    except ApiError as exc:
        if not exc.body.fields:
            raise
        fields = [
            ErrorField(field=_ITEM_LOCATION.sub(r"requests[\1]", f.field), message=f.message)
            for f in exc.body.fields
        ]
        raise ApiError(exc.status_code, exc.body.error, _summary(fields), fields) from None


def item_error(index: int, exc: ApiError) -> ApiError:
    """An item's refusal as the batch's: the same status and code, its fields under
    ``requests[<index>]``."""
    where = f"requests[{index}]"
    fields = [ErrorField(field=f"{where}.{f.field}", message=f.message) for f in exc.body.fields]
    if not fields:
        fields = [ErrorField(field=where, message=exc.body.message)]
    message = _summary(fields) + " The whole batch was refused; nothing was queued."
    return ApiError(exc.status_code, exc.body.error, message, fields, exc.headers)


async def submit_batch(
    svc: Services,
    route: ModelRoute,
    items: list[tuple[RenderParams, SubmitRequest]],
    body: BaseModel,
    *,
    admission: Admission,
    api: SeedApi,
    default_priority: Priority = BATCH_PRIORITY,
) -> SubmittedBatch:
    """``items``: each request as the client sent it, with its render parameters (defaults and
    seed resolved); ``body`` the whole request, for the ``Idempotency-Key``'s fingerprint. An
    item that names no priority class gets ``default_priority`` (a batch's: ``low``)."""
    task = Task.T2I
    checked: list[BatchItem] = []
    for index, (params, request) in enumerate(items):
        try:
            webhook = svc.submitter.check(
                route, task, params, request, admission, default_priority=default_priority
            )
        except ApiError as exc:
            raise item_error(index, exc) from None
        spec = JobSpec(
            job_id=str(uuid.uuid4()),
            tenant=admission.tenant,
            deadline_at=admission.deadline_at,
            model=route.name,
            task=task,
            params=params,
            created_at=utcnow(),
            preview=request.preview,
            priority=request.priority or default_priority,
        )
        checked.append(BatchItem(spec, webhook[0] if webhook else None))

    batch_id = str(uuid.uuid4())
    once, claim = admission.idempotency, None
    if once is not None:
        earlier = await once.claim(fingerprint(route, task, body, None), batch_id, batch=True)
        if earlier is not None:
            found = await svc.batches.get(earlier)
            if found is None:  # expired between the claim's check and this read
                raise not_found("batch", earlier)
            structlog.contextvars.bind_contextvars(batch_id=earlier)
            log.info("batch.replayed", model=route.name)
            return SubmittedBatch(earlier, found.job_ids, True, admission.headers)
        claim = once.commit_with_job()
    try:
        await svc.batches.submit(
            batch_id,
            checked,
            tenant=admission.tenant,
            api=api,
            message=SUBMITTED_MESSAGE,
            deadline_at=admission.deadline_at,
            max_queue=route.max_queue,
            quota=admission.quota,
            claim=claim,
        )
    except ClaimExpired:
        assert once is not None
        raise once.expired() from None
    except (TenantQueueFull, QueueFull) as full:
        if once is not None:
            await once.release()
        raise _refusal(route, len(checked), admission, full) from None
    except BaseException:
        if once is not None:
            await once.release()
        raise
    structlog.contextvars.bind_contextvars(batch_id=batch_id)
    log.info("batch.submitted", model=route.name, items=len(checked))
    return SubmittedBatch(
        batch_id, [item.spec.job_id for item in checked], False, admission.headers
    )


def _refusal(
    route: ModelRoute, size: int, admission: Admission, exc: TenantQueueFull | QueueFull
) -> ApiError:
    """The answer to a batch that does not fit: refused whole."""
    retry = {"Retry-After": str(QUEUE_FULL_RETRY_AFTER_S)}
    if isinstance(exc, TenantQueueFull):
        limit = admission.quota.max_queued if admission.quota else None
        log.info("quota.max_queued", active=exc.active, max_queued=limit, batch_items=size)
        return ApiError(
            429,
            "max_queued_exceeded",
            f"This key has {exc.active} jobs queued or running and its max_queued is {limit}: "
            f"a batch of {size} does not fit, and nothing was queued. Retry when enough of "
            "them end, or send a smaller batch.",
            headers=retry | admission.headers,
        )
    log.warning("batch.queue_full", model=route.name, depth=exc.depth, batch_items=size)
    return ApiError(
        429,
        "queue_full",
        f"Model {route.name!r} has {exc.depth} jobs waiting or rendering and its limit is "
        f"{route.max_queue}: a batch of {size} does not fit, and nothing was queued; retry "
        f"in {QUEUE_FULL_RETRY_AFTER_S} s.",
        headers=retry,
    )
