"""The notifier's Prometheus metrics (served at ``/metrics`` on the health port)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

ATTEMPTS = Counter(
    "darkroom_webhook_attempts",
    "Webhook delivery attempts, by the state the delivery is in after them (pending: it will "
    "be tried again).",
    ["type", "state"],
)
ATTEMPT_SECONDS = Histogram(
    "darkroom_webhook_attempt_seconds",
    "How long receivers took to answer an attempt (failures included).",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
NO_SECRET = Counter(
    "darkroom_webhook_no_secret",
    "Attempts not sent for want of a signing secret (auth off without DARKROOM_WEBHOOK_SECRET).",
)
