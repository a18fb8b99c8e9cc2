"""The worker's Prometheus metrics (served at ``/metrics`` on the health port).

``darkroom_pipeline_seconds_total`` over wall time is the duty cycle: the share of time the
device spends inside pipeline calls.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

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
