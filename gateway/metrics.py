"""The gateway's and the status service's Prometheus metrics, served on their metrics port.

``GET /metrics`` lives on a port of its own (``DARKROOM_METRICS_PORT``), never on the public
one: the public HTTPRoute/Ingress sends every path to the gateway, and what it would tell
(routes, tenants' traffic, queue depths) is the operator's. Requests are labelled by route
template (``/v1/jobs/{job_id}``), never by raw path, so a client cannot grow the label set.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence

from prometheus_client import Counter, Gauge, Histogram
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from common.health import metrics as metrics_endpoint

CACHE_HITS = Counter(
    "darkroom_result_cache_hits",
    "Submits answered from the result cache, without a GPU.",
    ["model"],
)
CACHE_MISSES = Counter(
    "darkroom_result_cache_misses",
    "Cacheable submits (seeded, cache not turned off) that were rendered: no live worker "
    "published the route's fingerprint (no_fingerprint), no entry (absent), or the entry's "
    "stored file was gone (gone).",
    ["model", "reason"],
)
HTTP_REQUESTS = Counter(
    "darkroom_http_requests",
    "HTTP requests answered, by route template (unmatched: no route), method and status code. "
    "An SSE feed counts when it opens.",
    ["route", "method", "status"],
)
SUBMIT_SECONDS = Histogram(
    "darkroom_submit_seconds",
    "How long submit requests take to answer, by route template (the OpenAI Images routes wait "
    "for the render).",
    ["route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
SSE_FEEDS_OPEN = Gauge("darkroom_sse_feeds_open", "SSE feeds this process holds open now.")
SSE_FEEDS_MAX = Gauge(
    "darkroom_sse_feeds_max", "Open SSE feeds this process accepts (DARKROOM_SSE_MAX_FEEDS)."
)

# The routes that take work in; their latency is what a client waits for at submit.
SUBMIT_ROUTES = frozenset(
    {
        "/api/{model}/t2i",
        "/api/{model}/i2i",
        "/api/{model}/t2v",
        "/api/{model}/i2v",
        "/api/{model}/batch",
        "/v1/generate",
        "/v1/batches",
        "/v1/images/generations",
        "/v1/images/edits",
    }
)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"


class HttpMetricsMiddleware:
    """Counts every answered request by route template, method and status; times submits.
    Outermost, so a request refused before routing (401, 413) counts under its route too."""

    def __init__(self, app: ASGIApp, routes: Sequence[BaseRoute]) -> None:
        self.app = app
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        counted = False

        def count(status: int) -> None:
            nonlocal counted
            counted = True
            method = scope["method"] if scope["method"] in METHODS else "other"
            HTTP_REQUESTS.labels(self._template(scope), method, str(status)).inc()

        async def send_counted(message: Message) -> None:
            if message["type"] == "http.response.start":
                count(message["status"])  # now, not when an SSE feed ends hours later
            await send(message)

        try:
            await self.app(scope, receive, send_counted)
        finally:
            if not counted:  # an exception before any response: the server error it becomes
                count(500)
            route = self._template(scope)
            if route in SUBMIT_ROUTES and scope["method"] == "POST":
                SUBMIT_SECONDS.labels(route).observe(time.perf_counter() - started)

    def _template(self, scope: Scope) -> str:
        route = scope.get("route")  # set by the router when it ran
        if route is None:  # refused before routing: find the route it was meant for
            route = next((r for r in self.routes if r.matches(scope)[0] is not Match.NONE), None)
        path = getattr(route, "path", None)
        return path if isinstance(path, str) and path else UNMATCHED


def metrics_app(before_scrape: Callable[[], Awaitable[None]]) -> Starlette:
    """``GET /metrics`` alone, for the metrics port; ``before_scrape`` refreshes the gauges
    that are read rather than counted (open feeds, queue depths)."""

    async def scrape(request: Request) -> Response:
        await before_scrape()
        return await metrics_endpoint(request)

    return Starlette(routes=[Route("/metrics", scrape, methods=["GET"])])
