"""Prometheus metrics of the gateway and the status service, scraped over HTTP from their metrics
port on a real stack (gateway and status service, no worker, real Redis): requests by route
template and status, submit latency, open feeds, and the per-route queue, dead-letter and
worker-readiness gauges read from Redis. The public port serves no /metrics."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from httpx_sse import aconnect_sse
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from common.consumer import Delivery, StreamConsumer
from common.keys import WORKERS_GROUP, Keys
from common.redis_server import RedisServer, free_port
from common.schemas import WorkerHeartbeat
from tests.conftest import _stack
from tests.support.stack import Stack
from tests.support.waiting import async_wait_for, wait_for

SMALL = {"prompt": "a lamp", "width": 64, "height": 64, "num_inference_steps": 2}
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture(scope="module")
def gateway(
    redis_server: RedisServer, models_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """A gateway with no worker on its own prefix: submitted jobs wait."""
    stack = _stack(
        "metrics",
        ("gateway",),
        redis_server,
        models_file,
        tmp_path_factory,
        extra={"DARKROOM_METRICS_PORT": str(free_port())},
    )
    wait_for(lambda: _scrape_or_none(stack), timeout_s=30, what="the gateway's metrics port")
    yield stack
    stack.stop_all()


@pytest.fixture(scope="module")
def status(gateway: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The status service beside it: same Redis and prefix, its own ports."""
    port = free_port()
    extra = {"DARKROOM_PORT": str(port), "DARKROOM_METRICS_PORT": str(free_port())}
    stack = Stack(
        name="metrics-status",
        workdir=tmp_path_factory.mktemp("metrics-status"),
        env=gateway.env | extra | {"DARKROOM_SSE_PING_S": "0.3"},
        port=port,
    )
    stack.start("status")
    wait_for(lambda: _scrape_or_none(stack), timeout_s=30, what="the status metrics port")
    yield stack
    stack.stop_all()


@pytest.fixture
async def keys(gateway: Stack) -> AsyncIterator[Keys]:
    yield Keys(gateway.prefix)


def _metrics_url(stack: Stack) -> str:
    return f"http://127.0.0.1:{stack.env['DARKROOM_METRICS_PORT']}/metrics"


def _scrape_or_none(stack: Stack) -> Samples | None:
    try:
        return scrape(stack)
    except httpx.HTTPError:
        return None


def scrape(stack: Stack) -> Samples:
    response = httpx.get(_metrics_url(stack), timeout=10)
    response.raise_for_status()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_the_public_port_serves_no_metrics(gateway: Stack, status: Stack) -> None:
    assert httpx.get(gateway.base_url + "/metrics").status_code == 404
    assert httpx.get(status.base_url + "/metrics").status_code == 404


def test_requests_are_counted_by_route_template_and_status(gateway: Stack) -> None:
    labels = {"route": "/v1/jobs/{job_id}", "method": "GET", "status": "404"}
    bad = {"route": "/api/{model}/t2i", "method": "POST", "status": "422"}
    before = scrape(gateway)
    unknown = [uuid.uuid4().hex for _ in range(3)]
    for job_id in unknown:
        assert httpx.get(f"{gateway.base_url}/v1/jobs/{job_id}").status_code == 404
    refused = httpx.post(f"{gateway.base_url}/api/sd/t2i", json={"width": 64})
    assert refused.status_code == 422, refused.text
    assert httpx.get(f"{gateway.base_url}/no/such/{unknown[0]}").status_code == 404

    after = scrape(gateway)
    name = "darkroom_http_requests_total"
    assert value(after, name, **labels) - value(before, name, **labels) == 3
    assert value(after, name, **bad) - value(before, name, **bad) == 1
    unmatched = {"route": "unmatched", "method": "GET", "status": "404"}
    assert value(after, name, **unmatched) - value(before, name, **unmatched) == 1
    # The raw paths (job ids) never become labels: the label set stays bounded.
    assert not any(job_id in str(key) for key in after for job_id in unknown)


async def test_a_queued_job_shows_in_the_route_gauges(
    gateway: Stack, redis: Redis, keys: Keys
) -> None:
    latency = ("darkroom_submit_seconds_count", {"route": "/api/{model}/t2i"})
    before = scrape(gateway)
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=30) as client:
        submitted = await client.post("/api/sd/t2i", json=SMALL)
    assert submitted.status_code == 200, submitted.text

    def queued_and_aged() -> Samples | None:
        samples = scrape(gateway)
        aged = value(samples, "darkroom_queue_oldest_age_seconds", model="sd") > 0
        return samples if aged else None

    samples = wait_for(queued_and_aged, timeout_s=10, what="the sd job's age above 0")
    assert value(samples, latency[0], **latency[1]) - value(before, latency[0], **latency[1]) == 1
    assert value(samples, "darkroom_queue_waiting_jobs", model="sd") >= 1
    assert value(samples, "darkroom_workers_ready", model="sd") == 0
    assert value(samples, "darkroom_workers_serving", model="sd") == 0
    # A route nobody submitted to is exported too, empty.
    assert ("darkroom_queue_waiting_jobs", frozenset({("model", "flux")})) in samples
    assert value(samples, "darkroom_queue_waiting_jobs", model="flux") == 0

    # A worker that has sd loaded says so in its heartbeat: it counts as ready.
    beat = WorkerHeartbeat(
        consumer=f"w-{uuid.uuid4().hex[:6]}",
        device="cpu",
        routes=["sd"],
        loaded=["sd"],
        ts=time.time(),
    )
    await redis.hset(keys.workers, beat.consumer, beat.model_dump_json())
    try:
        samples = scrape(gateway)
        assert value(samples, "darkroom_workers_ready", model="sd") == 1
        assert value(samples, "darkroom_workers_serving", model="sd") == 1
        assert value(samples, "darkroom_workers_ready", model="flux") == 0
    finally:
        await redis.hdel(keys.workers, beat.consumer)


async def test_dead_letters_are_counted_per_route(gateway: Stack, redis: Redis, keys: Keys) -> None:
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=30) as client:
        submitted = await client.post("/api/sdxl/t2i", json=SMALL)
    assert submitted.status_code == 200, submitted.text
    stream = keys.job_stream("sdxl")
    labels = {"stream": "jobs", "model": "sdxl"}
    before = value(scrape(gateway), "darkroom_dead_letters_total", **labels)
    # A worker that read the entry finds it out of deliveries and buries it, as the real
    # consumer loop does.
    consumer = StreamConsumer(
        redis=redis,
        streams=[stream],
        group=WORKERS_GROUP,
        consumer="test-metrics",
        handler=_never,
        dead_stream=keys.dead,
        dead_counts=keys.dead_counts,
    )
    await consumer.ensure_groups()
    ((_, entries),) = await redis.xreadgroup(WORKERS_GROUP, "test-metrics", {stream: ">"}, 1)
    msg_id, fields = entries[0]
    await consumer.bury(Delivery(stream=stream, msg_id=msg_id, fields=fields, attempt=6))

    after = scrape(gateway)
    assert value(after, "darkroom_dead_letters_total", **labels) == before + 1
    assert value(after, "darkroom_queue_waiting_jobs", model="sdxl") == 0


async def _never(deliveries: list[Delivery]) -> None:
    raise AssertionError("the test reads entries itself")


async def test_open_feeds_go_up_while_a_feed_is_open_and_down_after(
    gateway: Stack, status: Stack
) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        submitted = await client.post(f"{gateway.base_url}/v1/generate", json=SMALL)
        assert submitted.status_code in (200, 201, 202), submitted.text
        job_id = submitted.json()["job_id"]
        assert value(scrape(status), "darkroom_sse_feeds_open") == 0
        assert ("darkroom_sse_feeds_open", frozenset()) in scrape(status)
        url = f"{status.base_url}/v1/jobs/{job_id}/events"
        async with aconnect_sse(client, "GET", url) as source:
            assert source.response.status_code == 200
            events = source.aiter_sse()  # held: a dropped iterator closes the response
            await anext(events)  # the snapshot: the feed is open
            samples = await asyncio.to_thread(scrape, status)
            assert value(samples, "darkroom_sse_feeds_open") == 1
            assert value(samples, "darkroom_sse_feeds_max") > 1
            feed = {"route": "/v1/jobs/{job_id}/events", "method": "GET", "status": "200"}
            assert value(samples, "darkroom_http_requests_total", **feed) == 1

    async def closed() -> bool:
        samples = await asyncio.to_thread(scrape, status)
        return value(samples, "darkroom_sse_feeds_open") == 0

    await async_wait_for(closed, timeout_s=10, what="the feed's slot released")
    # The status service leaves the cluster's queues to the gateway.
    assert not any(name == "darkroom_queue_waiting_jobs" for name, _ in scrape(status))
