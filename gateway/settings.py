"""Gateway and status-service settings."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from common.settings import KeySettings
from common.tenants import AuthMode


class GatewaySettings(KeySettings):
    host: str = "0.0.0.0"
    # keys: every route but health, docs, /ui and /output needs an API key
    # (``darkroom keys create``); off: no keys, every job belongs to the tenant ``local``.
    auth: AuthMode = "keys"
    port: int = Field(default=8000, ge=1, le=65535)
    # GET /metrics (Prometheus) on this port, apart from the public one; unset: not served.
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    # uvicorn's access log, one unstructured line per request: off by default, since every
    # request is counted by route and status on /metrics and every job's own lines name it.
    access_log: bool = False
    # Largest accepted image upload; the request body may exceed it by the form's overhead only.
    max_upload_bytes: int = Field(default=20 * 1024 * 1024, ge=1024)
    # Larger images are refused before they are decoded (decompression bombs).
    max_input_pixels: int = Field(default=4096 * 4096, ge=64 * 64)
    max_json_bytes: int = Field(default=256 * 1024, ge=1024)
    # SSE: comment lines at this interval keep proxies from closing idle feeds.
    sse_ping_s: float = Field(default=15.0, gt=0)
    # How often a quiet SSE feed re-reads the event log (an expired job, a lost message; a pub/sub
    # reconnect or a gap in sequence numbers makes it re-read at once anyway).
    sse_resync_s: float = Field(default=30.0, gt=0)
    # Open SSE feeds per status process; past it a new feed gets 503 + Retry-After (scale out
    # instead). bench/sse_fanout.py measures one process serving 3000.
    sse_max_feeds: int = Field(default=5000, ge=1)
    # How long an Idempotency-Key is remembered: a retry within it gets the original job.
    idempotency_ttl_s: int = Field(default=24 * 3600, ge=60)
    # Input images waiting in Redis for their jobs, in all: past it a submit with an image gets
    # 503 + Retry-After and nothing is queued. Keep it well under Redis's maxmemory.
    max_waiting_input_bytes: int = Field(default=512 * 1024 * 1024, ge=1024 * 1024)
    # The same per tenant (with DARKROOM_AUTH=keys), so one tenant's uploads cannot take the
    # whole cap; past it that tenant's submits with an image get 429 + Retry-After.
    max_waiting_input_bytes_per_tenant: int = Field(default=64 * 1024 * 1024, ge=1024 * 1024)
    # The sweeper (one gateway replica at a time): deadlines are checked this often, and a
    # consumer idle this long with nothing pending is removed from its group.
    sweep_interval_ms: int = Field(default=250, ge=10)
    departed_consumer_idle_s: float = Field(default=900.0, ge=1)
    # Image uploads received at once by one gateway: multipart parts over 1 MiB spill to /tmp,
    # so /tmp must hold this many of the largest (deploy/ sizes it so); past it 503 + Retry-After.
    max_concurrent_uploads: int = Field(default=48, ge=1)
    # The result cache: a seeded request identical to one rendered before is answered with that
    # result, without a GPU (common/result_cache.py). "tenant": each tenant hits only its own
    # results; "global": every tenant shares them (one tenant's hit reveals another's render).
    result_cache: bool = True
    result_cache_scope: Literal["tenant", "global"] = "tenant"
