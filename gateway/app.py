"""The Starlette app: the whole gateway (submit, status, docs, /output) or status alone."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Literal

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import BaseRoute, Mount
from starlette.staticfiles import StaticFiles

from common.batches import BatchStore
from common.catalog import Catalog
from common.health import embedded_server
from common.jobs import JobStore
from common.keys import Keys
from common.previews import PreviewStore
from common.redis import connect
from common.tenants import TenantStore
from common.usage import UsageStore
from common.webhook_targets import parse_nets
from gateway import (
    routes_api,
    routes_batches,
    routes_cancel,
    routes_keys,
    routes_openai,
    routes_status,
    routes_usage,
    routes_v1,
    routes_webhooks,
)
from gateway.auth import AuthMiddleware
from gateway.body_limit import BodyLimitMiddleware
from gateway.docs import docs_routes
from gateway.errors import EXCEPTION_HANDLERS
from gateway.fanout import EventFanout
from gateway.feed import FeedLimit
from gateway.job_tokens import JobTokens
from gateway.metrics import SSE_FEEDS_MAX, SSE_FEEDS_OPEN, HttpMetricsMiddleware, metrics_app
from gateway.openapi import build_openapi
from gateway.playground import playground_routes
from gateway.quotas import RateLimiter
from gateway.result_cache import CacheLookup
from gateway.route_metrics import ROUTE_STATE
from gateway.services import Services
from gateway.settings import GatewaySettings
from gateway.submit import Submitter
from gateway.sweeper import Sweeper, consumer_groups

Role = Literal["gateway", "status"]
TITLE = "Darkroom"
VERSION = "0.1.0"
DESCRIPTION = (
    "Image generation as a service. Submit a job, watch it over Server-Sent Events, fetch the "
    "result URL. Seed 1's API lives under /api, seed 2's under /v1, and the OpenAI Images API "
    "at /v1/images/generations, /v1/images/edits and /v1/models."
)
PLAYGROUND_NOTE = " To try the models in a browser, open [the playground](ui)."
# Room for the multipart framing around the largest accepted upload.
FORM_OVERHEAD_BYTES = 1024 * 1024


def create_app(settings: GatewaySettings, *, role: Role = "gateway") -> Starlette:
    catalog = Catalog.load(settings.models_file)
    keys = Keys(settings.key_prefix)
    api_routes: list[BaseRoute] = [*routes_status.routes, *routes_batches.read_routes]
    if role == "gateway":
        api_routes += routes_api.routes + routes_v1.routes + routes_cancel.routes
        api_routes += routes_batches.submit_routes
        api_routes += routes_webhooks.routes
        api_routes += routes_usage.routes
        api_routes += routes_openai.routes
        if settings.auth == "keys":  # with auth off there are no keys to manage: 404
            api_routes += routes_keys.routes
    # /metrics is served on the metrics port (gateway.metrics), never here.
    routes = api_routes + docs_routes(TITLE, playground=role == "gateway")
    if role == "gateway":
        routes += playground_routes()
    local_output = role == "gateway" and settings.storage == "local"
    if local_output:
        settings.output_dir.mkdir(parents=True, exist_ok=True)
        routes.append(Mount("/output", StaticFiles(directory=settings.output_dir), name="output"))

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        redis = connect(settings)
        jobs = JobStore(
            redis,
            keys,
            task_ttl_s=settings.task_ttl_s,
            usage_retention_days=settings.usage_retention_days,
            priority_aging_s=settings.priority_aging_s,
        )
        tenants = TenantStore(
            redis,
            keys,
            defaults=settings.key_defaults,
            webhook_grace_s=settings.webhook_secret_grace_s,
        )
        # A key revoked on another replica is forgotten here as soon as the message arrives.
        fanout = EventFanout(redis, keys, on_revoked=tenants.forget)
        fanout.start()
        app.state.services = Services(
            settings=settings,
            redis=redis,
            catalog=catalog,
            jobs=jobs,
            fanout=fanout,
            feeds=FeedLimit(settings.sse_max_feeds),
            keys=keys,
            tenants=tenants,
            rate=RateLimiter(redis, keys),
            job_tokens=JobTokens(redis, keys),
            usage=UsageStore(redis, keys, retention_days=settings.usage_retention_days),
            batches=BatchStore(redis, keys, priority_aging_s=settings.priority_aging_s),
            previews=PreviewStore(redis, keys),
            submitter=Submitter(
                jobs,
                keys,
                catalog,
                blob_ttl_s=settings.blob_ttl_s,
                max_waiting_input_bytes=settings.max_waiting_input_bytes,
                webhook_allow_nets=parse_nets(settings.webhook_allow_nets),
                cache=(
                    CacheLookup(
                        redis,
                        keys,
                        shared=settings.result_cache_scope == "global",
                        local_dir=settings.output_dir if settings.storage == "local" else None,
                    )
                    if settings.result_cache
                    else None
                ),
            ),
        )
        stop = asyncio.Event()
        feeds = app.state.services.feeds
        route_names = list(catalog.routes)

        async def before_scrape() -> None:
            SSE_FEEDS_OPEN.set(feeds.open)
            SSE_FEEDS_MAX.set(feeds.max_feeds)
            if role == "gateway":  # one kind of replica exports the cluster's queues
                await ROUTE_STATE.refresh(redis, keys, route_names)

        metrics_port = contextlib.AsyncExitStack()
        if settings.metrics_port is not None:
            await metrics_port.enter_async_context(
                embedded_server(metrics_app(before_scrape), settings.host, settings.metrics_port)
            )
        sweeping = None
        if role == "gateway":
            sweeper = Sweeper(
                redis,
                keys,
                jobs,
                groups=consumer_groups(keys, catalog.routes),
                consumer_idle_s=settings.departed_consumer_idle_s,
                interval_s=settings.sweep_interval_ms / 1000,
            )
            sweeping = asyncio.create_task(sweeper.run(stop), name="sweeper")
        # What start-up loaded lives as long as the process: keep it out of every collection,
        # so full collections stay short with thousands of open feeds.
        gc.freeze()
        try:
            yield
        finally:
            stop.set()
            if sweeping is not None:
                await sweeping
            await fanout.stop()
            await metrics_port.aclose()
            await redis.aclose()

    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers=EXCEPTION_HANDLERS,
        middleware=[
            # Outermost: requests refused by the others are counted too.
            Middleware(HttpMetricsMiddleware, routes=routes),
            # Then: a request without a valid key is refused before its body is read.
            Middleware(AuthMiddleware, mode=settings.auth, local_output=local_output),
            Middleware(
                BodyLimitMiddleware,
                max_body_bytes=settings.max_upload_bytes + FORM_OVERHEAD_BYTES,
                max_concurrent_uploads=settings.max_concurrent_uploads,
            ),
        ],
    )
    app.state.openapi = build_openapi(
        api_routes,
        title=TITLE,
        version=VERSION,
        description=DESCRIPTION + (PLAYGROUND_NOTE if role == "gateway" else ""),
        path_values={"model": sorted(catalog.routes)},
        auth=settings.auth == "keys",
    )
    return app
