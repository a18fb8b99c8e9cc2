"""The worker's Prometheus metrics (served at ``/metrics`` on the health port).

``darkroom_pipeline_seconds_total`` over wall time is the duty cycle: the share of time the
device spends inside pipeline calls.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

PIPELINE_SECONDS = Counter(
    "darkroom_pipeline_seconds", "Time spent inside pipeline calls.", ["model"]
)
JOBS = Counter(
    "darkroom_jobs", "Jobs this worker finished rendering, by outcome.", ["model", "outcome"]
)
BATCH_SIZE = Histogram(
    "darkroom_batch_size",
    "Jobs rendered per pipeline call.",
    ["model"],
    buckets=(1, 2, 4, 8, 16, 32, 64),
)
MODEL_LOAD_FAILED = Gauge(
    "darkroom_model_load_failed",
    "1 while a route this worker serves has weights that failed to load (its jobs fail).",
    ["model"],
)
RENDER_STALLS = Counter(
    "darkroom_render_stalls",
    "Renders found stuck: no denoising step for the route's stall_timeout_s.",
    ["model"],
)
QUEUE_WAIT_SECONDS = Histogram(
    "darkroom_queue_wait_seconds",
    "Time from a job's submission to the start of its first render, by route, tenant and "
    "priority class.",
    ["model", "tenant", "priority"],
    buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
)
