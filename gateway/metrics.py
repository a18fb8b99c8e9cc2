"""The gateway's Prometheus metrics, served at ``GET /metrics`` (no key needed)."""

from __future__ import annotations

import prometheus_client
from prometheus_client import Counter
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

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


async def metrics(request: Request) -> Response:
    return Response(
        prometheus_client.generate_latest(), media_type=prometheus_client.CONTENT_TYPE_LATEST
    )


routes = [Route("/metrics", metrics, methods=["GET"], include_in_schema=False)]
