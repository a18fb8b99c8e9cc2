"""Per-route state read from Redis when Prometheus scrapes a gateway: the backlog (waiting jobs,
the oldest one's age), dead letters, ready workers, and the webhook backlog.

Every gateway replica exports the same cluster-wide values (read, not counted, so a replica that
restarts or scales in loses nothing): aggregate with ``max by (model)``, never ``sum``. The
status service exports none of them. A scrape while Redis is unreachable leaves these series
out (the rest of /metrics still answers), so a stale value never looks current.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from prometheus_client.core import REGISTRY, CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from redis.asyncio import Redis

from common.keys import Keys
from common.logging import get_logger
from common.queue_depth import Backlog, route_backlog
from common.redis_errors import REDIS_TRANSIENT, describe
from gateway.workers import live_workers

log = get_logger(__name__)

# A scrape waits at most this long for Redis; Prometheus's own timeout is 10 s by default.
READ_TIMEOUT_S = 3.0


@dataclass
class RouteState:
    backlog: dict[str, Backlog]
    workers_ready: dict[str, int]  # live workers with the route's pipeline resident
    workers_serving: dict[str, int]  # live workers that serve the route (loaded or not)
    dead_letters: dict[str, int]  # by stream name without the key prefix (jobs:sd, rendered…)
    webhook_events_waiting: int
    webhook_deliveries_scheduled: int
    webhook_oldest_overdue_s: float
    routes: Sequence[str] = field(default_factory=list)


async def read_route_state(redis: Redis, keys: Keys, routes: Sequence[str]) -> RouteState:
    backlog = await route_backlog(redis, keys, routes)
    workers = await live_workers(redis, keys)
    ready = {name: 0 for name in routes}
    serving = {name: 0 for name in routes}
    for worker in workers:
        for name in worker.routes:
            if name in serving:
                serving[name] += 1
        for name in worker.loaded:
            if name in ready and name not in worker.failed:
                ready[name] += 1
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hgetall(keys.dead_counts)
        pipe.xlen(keys.webhook_events)
        pipe.zcard(keys.webhook_due)
        pipe.zrange(keys.webhook_due, 0, 0, withscores=True)
        dead, events, scheduled, first_due = await pipe.execute()
    # A delivery's score is when it is next due; one being sent now is leased into the future.
    overdue_s = max(time.time() - float(first_due[0][1]), 0.0) if first_due else 0.0
    return RouteState(
        backlog=backlog,
        workers_ready=ready,
        workers_serving=serving,
        dead_letters={name.removeprefix(keys.prefix): int(count) for name, count in dead.items()},
        webhook_events_waiting=int(events),
        webhook_deliveries_scheduled=int(scheduled),
        webhook_oldest_overdue_s=overdue_s,
        routes=list(routes),
    )


class RouteStateCollector(Collector):
    """Yields the latest :class:`RouteState` read; :meth:`refresh` reads it before a scrape."""

    def __init__(self) -> None:
        self.state: RouteState | None = None

    async def refresh(self, redis: Redis, keys: Keys, routes: Sequence[str]) -> None:
        try:
            self.state = await asyncio.wait_for(
                read_route_state(redis, keys, routes), READ_TIMEOUT_S
            )
        except TimeoutError:
            self.state = None
            log.warning("metrics.route_state_unavailable", error="redis did not answer in time")
        except REDIS_TRANSIENT as exc:
            self.state = None
            log.warning("metrics.route_state_unavailable", error=describe(exc))

    def collect(self) -> Iterator[Metric]:
        state = self.state
        if state is None:
            return
        yield _by_route(
            "darkroom_queue_waiting_jobs",
            "Jobs waiting for a worker on the route (not yet taken by one).",
            ((name, b.waiting) for name, b in state.backlog.items()),
        )
        yield _by_route(
            "darkroom_queue_oldest_age_seconds",
            "How long the route's oldest waiting job has waited; 0 when none waits.",
            ((name, b.oldest_age_s) for name, b in state.backlog.items()),
        )
        yield _by_route(
            "darkroom_workers_ready",
            "Live workers (heartbeat within 15 s) with the route's pipeline loaded and healthy.",
            state.workers_ready.items(),
        )
        yield _by_route(
            "darkroom_workers_serving",
            "Live workers that serve the route, loaded or still loading.",
            state.workers_serving.items(),
        )
        dead = CounterMetricFamily(
            "darkroom_dead_letters",
            "Entries moved to the dead stream after their last delivery, by stream: jobs (renders, "
            "with the route as model), rendered (uploads), events (webhooks).",
            labels=["stream", "model"],
        )
        for stream, count in sorted(state.dead_letters.items()):
            kind, _, route = stream.partition(":")
            dead.add_metric([kind, route], count)
        yield dead
        yield GaugeMetricFamily(
            "darkroom_webhook_events_waiting",
            "Job events waiting for (or being read by) a notifier.",
            value=state.webhook_events_waiting,
        )
        yield GaugeMetricFamily(
            "darkroom_webhook_deliveries_scheduled",
            "Webhook deliveries not yet done: due now, retrying later, or being sent.",
            value=state.webhook_deliveries_scheduled,
        )
        yield GaugeMetricFamily(
            "darkroom_webhook_oldest_overdue_seconds",
            "How long past its due time the most overdue webhook delivery is; 0 when none is.",
            value=state.webhook_oldest_overdue_s,
        )


def _by_route(
    name: str, documentation: str, values: Iterable[tuple[str, float | int]]
) -> GaugeMetricFamily:
    gauge = GaugeMetricFamily(name, documentation, labels=["model"])
    for route, value in sorted(values):
        gauge.add_metric([route], value)
    return gauge


# One per process, registered once (a process may build several apps: the tests do).
ROUTE_STATE = RouteStateCollector()
REGISTRY.register(ROUTE_STATE)
