"""A validated request becomes a queued job: the key's quotas, route limits, queue room,
idempotency, seed, style, one transaction. A seeded request rendered before is answered from the
result cache instead: the same job, handed straight to the uploader."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import structlog
from pydantic import BaseModel
from starlette.requests import Request

from common.catalog import Catalog, ModelRoute
from common.jobs import (
    ClaimExpired,
    InputsFull,
    JobStore,
    KeyClaim,
    QueueFull,
    TenantInputsFull,
    TenantQueueFull,
    TenantQuota,
)
from common.keys import Keys
from common.logging import get_logger
from common.schemas import (
    ErrorField,
    ErrorResponse,
    GenerateRequest,
    ImageToImageForm,
    ImageToVideoForm,
    JobSpec,
    RenderedJob,
    RenderParams,
    SeedApi,
    SubmitRequest,
    Task,
    TextToImageRequest,
    TextToVideoRequest,
    Webhook,
    utcnow,
)
from common.tenants import LOCAL_TENANT, KeyLimits, Priority, priority_allowed
from common.webhook_targets import BadWebhookUrl, Network, check_literal
from gateway.auth import tenant_of
from gateway.errors import ApiError, field_error
from gateway.idempotency import (
    HEADER_DOCS,
    Idempotency,
    fingerprint,
    key_from_request,
    replay_headers,
)
from gateway.job_tokens import HEADER as JOB_TOKEN_HEADER
from gateway.job_tokens import JobTokens
from gateway.quotas import RATE_HEADERS_DOCS, admit_rate, check_cost
from gateway.result_cache import CacheHit, CacheLookup
from gateway.route_params import check_route_limits, resolve_seed, route_angles, video_params

if TYPE_CHECKING:
    from gateway.services import Services

log = get_logger(__name__)

SUBMITTED_MESSAGE = "Task submitted. Use /api/{session_id}/status to check progress."
# A request header: fail the job with "deadline exceeded" if not done this many seconds after
# submission (a queued job never starts; a running one stops at its next step).
CANCEL_AFTER_HEADER = "Cancel-After"
MAX_CANCEL_AFTER_S = 7 * 24 * 3600
SUBMIT_HEADERS = {
    **HEADER_DOCS,
    CANCEL_AFTER_HEADER: "Seconds: if the job is not finished this long after submission it "
    "fails with the error `deadline exceeded` (a queued job never starts; a running one stops "
    "at its next denoising step).",
}
# What a client turned away by a full queue is told to wait; a render takes seconds at least.
QUEUE_FULL_RETRY_AFTER_S = 5
# A submit's answers besides 404/413/422: a reused Idempotency-Key, a full queue or a key's
# quota reached (for OpenAPI).
SUBMIT_ERRORS: dict[int, type[BaseModel]] = {
    403: ErrorResponse,
    409: ErrorResponse,
    410: ErrorResponse,
    429: ErrorResponse,
    503: ErrorResponse,
}
SUBMIT_STATUS_DOCS = {
    403: "The job asks for a priority class above the API key's `max_priority` "
    "(`priority_not_allowed`). Nothing was queued.",
    422: "A field is invalid (`fields` names it), or the job costs more than the API key's "
    "`max_cost` (`max_cost_exceeded`; the cost is width × height / 10⁶ × steps × frames × "
    "renders, in megapixel-steps). Nothing was queued.",
    429: "A limit was reached and nothing was queued: the API key's submit rate "
    "(`rate_limited`, with the RateLimit headers), its jobs queued or running at once "
    "(`max_queued_exceeded`), its input images waiting (`tenant_inputs_full`), or the model's "
    "queue (`queue_full`). Retry after the Retry-After header's seconds.",
}
SUBMIT_RESPONSE_HEADERS = {
    JOB_TOKEN_HEADER: "The job's read-only token: `?token=` on its status and events routes "
    "(for pages; see GET /v1/jobs/{job_id}/token).",
    **RATE_HEADERS_DOCS,
    "Retry-After": "On a 429: the seconds to wait before retrying.",
}


@dataclass(frozen=True)
class Admission:
    """Per request, what a submit needs besides the job store: the ``Idempotency-Key``'s record
    when one was sent, the ``Cancel-After`` deadline, the tenant the job will belong to, its
    key's limits and the tenant's quota checked with the write (none with auth off), and the
    RateLimit headers for the answer."""

    idempotency: Idempotency | None = None
    # Unix time after which the job fails with "deadline exceeded" (``Cancel-After`` header).
    deadline_at: float | None = None
    tenant: str = LOCAL_TENANT
    limits: KeyLimits = field(default_factory=KeyLimits)
    quota: TenantQuota | None = None
    headers: dict[str, str] = field(default_factory=dict)


async def admission(request: Request, svc: Services) -> Admission:
    """The request's admission, before any body is read: a 422 for an unusable
    ``Idempotency-Key`` or ``Cancel-After``, a 429 past the key's submit rate (this request
    counts against it)."""
    key = key_from_request(request)
    ttl_s = svc.settings.idempotency_ttl_s
    tenant = tenant_of(request)
    deadline_at = _deadline(request)
    quota = None
    if svc.settings.auth == "keys":  # with auth off only the global limits apply
        quota = TenantQuota(
            max_queued=tenant.limits.max_queued,
            max_input_bytes=svc.settings.max_waiting_input_bytes_per_tenant,
        )
    headers = await admit_rate(svc.rate, tenant.name, tenant.limits)
    return Admission(
        None if key is None else Idempotency(svc.redis, svc.keys, tenant.name, key, ttl_s=ttl_s),
        deadline_at,
        tenant.name,
        tenant.limits,
        quota,
        headers,
    )


def _deadline(request: Request) -> float | None:
    raw = request.headers.get(CANCEL_AFTER_HEADER)
    if raw is None:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds <= MAX_CANCEL_AFTER_S:
        raise field_error(
            CANCEL_AFTER_HEADER,
            f"{raw!r}: give seconds, more than 0 and at most {MAX_CANCEL_AFTER_S}",
        )
    return time.time() + seconds


@dataclass(frozen=True)
class Submitted:
    job_id: str
    # An earlier request with the same Idempotency-Key made this job; nothing new was queued.
    replayed: bool = False
    # For the answer: the key's RateLimit headers.
    headers: dict[str, str] = field(default_factory=dict)


async def submitted_headers(tokens: JobTokens, submitted: Submitted) -> dict[str, str]:
    """A submit's answer headers: the job's read-only token (every time, a replay included), the
    key's RateLimit fields, and whether an ``Idempotency-Key`` replayed an earlier job."""
    headers = {JOB_TOKEN_HEADER: await tokens.issue(submitted.job_id), **submitted.headers}
    headers.update(replay_headers(submitted.replayed) or {})
    return headers


class Submitter:
    def __init__(
        self,
        jobs: JobStore,
        keys: Keys,
        catalog: Catalog,
        *,
        blob_ttl_s: int,
        max_waiting_input_bytes: int | None = None,
        webhook_allow_nets: Sequence[Network] = (),
        cache: CacheLookup | None = None,
    ) -> None:
        self._cache = cache
        self._jobs = jobs
        self._keys = keys
        self._catalog = catalog
        self._blob_ttl_s = blob_ttl_s
        self._max_waiting_input_bytes = max_waiting_input_bytes
        self._webhook_allow_nets = webhook_allow_nets

    def route(self, model: str, task: Task) -> ModelRoute:
        route = self._catalog.routes.get(model)
        if route is None:
            known = ", ".join(sorted(self._catalog.routes))
            raise ApiError(404, "unknown_model", f"No model route {model!r}; available: {known}.")
        if task not in route.tasks:
            tasks = ", ".join(t.value for t in route.tasks)
            raise ApiError(
                404,
                "unsupported_task",
                f"Model {model!r} does not serve {task.value}; it serves: {tasks}.",
            )
        return route

    async def text_to_image(
        self, model: str, request: TextToImageRequest, *, admission: Admission
    ) -> Submitted:
        route, params = self.t2i_params(model, request)
        return await self._enqueue(route, Task.T2I, params, request, admission)

    def t2i_params(
        self, model: str, request: TextToImageRequest
    ) -> tuple[ModelRoute, RenderParams]:
        """The route and render parameters of a text-to-image request (defaults, seed)."""
        route = self.route(model, Task.T2I)
        params = RenderParams(
            prompt=request.prompt,
            negative_prompt=request.negative_prompt,
            width=request.width,
            height=request.height,
            num_inference_steps=request.num_inference_steps,
            guidance_scale=request.guidance_scale,
            seed=resolve_seed(request.seed),
            angles=route_angles(route, request.angles),
        )
        return route, params

    async def image_to_image(
        self,
        model: str,
        form: ImageToImageForm,
        image: bytes,
        size: tuple[int, int],
        *,
        admission: Admission,
    ) -> Submitted:
        route = self.route(model, Task.I2I)
        if int(form.num_inference_steps * form.strength) < 1:
            # img2img denoises only the last strength × steps steps; zero would render nothing.
            raise field_error(
                "strength",
                f"strength {form.strength} × num_inference_steps "
                f"{form.num_inference_steps} leaves no denoising step; raise either",
            )
        params = RenderParams(
            prompt=form.prompt,
            negative_prompt=form.negative_prompt,
            width=size[0],
            height=size[1],
            num_inference_steps=form.num_inference_steps,
            guidance_scale=form.guidance_scale,
            seed=resolve_seed(form.seed),
            strength=form.strength,
            angles=route_angles(route, form.angles),
        )
        return await self._enqueue(route, Task.I2I, params, form, admission, image)

    async def text_to_video(
        self, model: str, request: TextToVideoRequest, *, admission: Admission
    ) -> Submitted:
        route = self.route(model, Task.T2V)
        params = video_params(route, request, request.width, request.height)
        return await self._enqueue(route, Task.T2V, params, request, admission)

    async def image_to_video(
        self,
        model: str,
        form: ImageToVideoForm,
        image: bytes,
        size: tuple[int, int],
        *,
        admission: Admission,
    ) -> Submitted:
        route = self.route(model, Task.I2V)
        params = video_params(route, form, *size)
        return await self._enqueue(route, Task.I2V, params, form, admission, image)

    async def generate(self, request: GenerateRequest, *, admission: Admission) -> Submitted:
        route, params = self.generate_params(request)
        return await self._enqueue(route, Task.T2I, params, request, admission)

    def generate_params(self, request: GenerateRequest) -> tuple[ModelRoute, RenderParams]:
        """The route and render parameters of a seed-2 request (style applied, seed chosen)."""
        route = self.route(self._catalog.v1_route, Task.T2I)
        style = self._catalog.styles.get(request.style_id)
        if style is None:
            known = ", ".join(str(i) for i in sorted(self._catalog.styles))
            raise field_error(
                "style_id", f"unknown style {request.style_id}; known styles: {known}"
            )
        prompt, negative = style.apply(request.prompt, request.negative_prompt)
        params = RenderParams(
            prompt=prompt,
            negative_prompt=negative,
            width=request.width,
            height=request.height,
            num_inference_steps=request.num_inference_steps,
            guidance_scale=request.guidance_scale,
            seed=resolve_seed(None if request.seed == -1 else request.seed),
        )
        return route, params

    def check(
        self,
        route: ModelRoute,
        task: Task,
        params: RenderParams,
        request: SubmitRequest,
        admission: Admission,
        *,
        default_priority: Priority = "normal",
    ) -> tuple[Webhook, SeedApi] | None:
        """What ``_enqueue`` checks before writing (the route's limits, the key's ``max_cost``
        and ``max_priority``, the webhook's address), for a caller that writes jobs itself
        (``gateway.batch_submit``); the job's webhook when it asked for one."""
        check_route_limits(route, params)
        check_cost(admission.limits, task, params)
        check_priority(admission.limits, request.priority or default_priority)
        return self._webhook(request)

    async def _enqueue(
        self,
        route: ModelRoute,
        task: Task,
        params: RenderParams,
        request: SubmitRequest,
        admission: Admission,
        image: bytes | None = None,
    ) -> Submitted:
        """``request`` is what the client sent, validated; ``params`` adds the defaults and seed."""
        webhook = self.check(route, task, params, request, admission)
        job_id = str(uuid.uuid4())
        once, claim = admission.idempotency, None
        if once is not None:
            earlier = await once.claim(fingerprint(route, task, request, image), job_id)
            if earlier is not None:
                structlog.contextvars.bind_contextvars(job_id=earlier)
                log.info("job.replayed", model=route.name, task=task.value)
                return Submitted(earlier, replayed=True, headers=admission.headers)
            claim = once.commit_with_job()
        try:
            cache_request, hit = await self._cached(route, task, params, request, admission, image)
            await self._submit(
                route,
                task,
                params,
                job_id,
                image,
                admission,
                claim,
                webhook,
                request.priority or "normal",
                cache_request,
                hit,
                preview=request.preview,
            )
        except ClaimExpired:
            assert once is not None
            raise once.expired() from None
        except BaseException:
            if once is not None:
                await once.release()
            raise
        return Submitted(job_id, headers=admission.headers)

    async def _cached(
        self,
        route: ModelRoute,
        task: Task,
        params: RenderParams,
        request: SubmitRequest,
        admission: Admission,
        image: bytes | None,
    ) -> tuple[str | None, CacheHit | None]:
        """The request's half of its result-cache key (``None``: not cacheable) and the cached
        result, if any. Only a request that names its seed is the same render every time."""
        seed = getattr(request, "seed", None)
        if self._cache is None or not request.cache or seed is None or seed == -1:
            return None, None
        digest = self._cache.request_digest(admission.tenant, route.name, task, params, image)
        return digest, await self._cache.find(route.name, digest)

    def _webhook(self, request: SubmitRequest) -> tuple[Webhook, SeedApi] | None:
        """The job's webhook and the seed API its payloads speak; a URL whose host is an
        address webhooks may not reach is a 422 here, before anything is queued."""
        webhook = request.webhook_target()
        if webhook is None:
            return None
        try:
            check_literal(webhook.url, self._webhook_allow_nets)
        except BadWebhookUrl as exc:
            raise field_error("webhook", str(exc)) from None
        return webhook, "v1" if isinstance(request, GenerateRequest) else "api"

    async def _submit(
        self,
        route: ModelRoute,
        task: Task,
        params: RenderParams,
        job_id: str,
        image: bytes | None,
        admission: Admission,
        claim: KeyClaim | None,
        webhook: tuple[Webhook, SeedApi] | None,
        priority: Priority,
        cache_request: str | None = None,
        hit: CacheHit | None = None,
        *,
        preview: bool = False,
    ) -> None:
        if hit is not None:
            image = None  # nothing will read it
        spec = JobSpec(
            job_id=job_id,
            tenant=admission.tenant,
            deadline_at=admission.deadline_at,
            model=route.name,
            task=task,
            params=params,
            created_at=utcnow(),
            input_blob=self._keys.input_blob(job_id) if image is not None else None,
            cache_request=cache_request,
            preview=preview,
            priority=priority,
        )
        # A hit goes to the uploader, which signs fresh URLs of the earlier result's objects.
        rendered = (
            None
            if hit is None
            else RenderedJob(
                job_id=job_id, created_at=spec.created_at, outputs=[], cached_keys=hit.result.keys
            )
        )
        try:
            # Acked entries are deleted, so the stream's length is jobs waiting or in flight.
            await self._jobs.submit(
                spec,
                message=SUBMITTED_MESSAGE,
                input_bytes=image,
                blob_ttl_s=self._blob_ttl_s,
                max_queue=route.max_queue,
                max_input_bytes=self._max_waiting_input_bytes,
                claim=claim,
                quota=admission.quota,
                webhook=webhook[0] if webhook else None,
                api=webhook[1] if webhook else "api",
                rendered=rendered,
            )
        except TenantQueueFull as full:
            limit = admission.quota.max_queued if admission.quota else None
            log.info("quota.max_queued", active=full.active, max_queued=limit)
            raise ApiError(
                429,
                "max_queued_exceeded",
                f"This key has {full.active} jobs queued or running and its max_queued is "
                f"{limit}; nothing was queued. Retry when one of them ends (in "
                f"{QUEUE_FULL_RETRY_AFTER_S} s, say).",
                headers={"Retry-After": str(QUEUE_FULL_RETRY_AFTER_S)} | admission.headers,
            ) from None
        except TenantInputsFull as full:
            limit = admission.quota.max_input_bytes if admission.quota else None
            log.info("quota.inputs_full", waiting_bytes=full.waiting_bytes, limit=limit)
            raise ApiError(
                429,
                "tenant_inputs_full",
                f"This key's input images already take {full.waiting_bytes} bytes waiting for "
                f"workers and this one would pass its share of {limit} bytes; nothing was "
                f"queued, retry in {QUEUE_FULL_RETRY_AFTER_S} s.",
                headers={"Retry-After": str(QUEUE_FULL_RETRY_AFTER_S)} | admission.headers,
            ) from None
        except QueueFull as full:
            log.warning(
                "job.queue_full", model=route.name, depth=full.depth, max_queue=route.max_queue
            )
            raise ApiError(
                429,
                "queue_full",
                f"Model {route.name!r} has {full.depth} jobs waiting or rendering, its limit is "
                f"{route.max_queue}; retry in {QUEUE_FULL_RETRY_AFTER_S} s.",
                headers={"Retry-After": str(QUEUE_FULL_RETRY_AFTER_S)},
            ) from None
        except InputsFull as full:
            log.warning("job.inputs_full", waiting_bytes=full.waiting_bytes)
            raise ApiError(
                503,
                "inputs_full",
                f"{full.waiting_bytes} bytes of input images already wait for workers, the "
                f"limit is {self._max_waiting_input_bytes}; nothing was queued, retry in "
                f"{QUEUE_FULL_RETRY_AFTER_S} s.",
                headers={"Retry-After": str(QUEUE_FULL_RETRY_AFTER_S)},
            ) from None
        structlog.contextvars.bind_contextvars(job_id=job_id)
        log.info(
            "job.submitted",
            model=route.name,
            task=task.value,
            priority=priority,
            width=params.width,
            height=params.height,
            steps=params.num_inference_steps,
            cache="hit" if hit else "miss" if cache_request else "off",
            **({"cached_from": hit.result.job_id} if hit else {}),
        )


def check_priority(limits: KeyLimits, priority: Priority) -> None:
    """A 403 naming the limit when the job asks for a class above the key's ``max_priority``."""
    if priority_allowed(limits, priority):
        return
    log.info("quota.priority_not_allowed", priority=priority, max_priority=limits.max_priority)
    raise ApiError(
        403,
        "priority_not_allowed",
        f"This key may submit jobs of priority {limits.max_priority!r} at most (its "
        f"max_priority); this one asks for {priority!r}. Ask for {limits.max_priority!r} or "
        "lower; nothing was queued.",
        [ErrorField(field="priority", message=f"at most {limits.max_priority!r} for this key")],
    )
