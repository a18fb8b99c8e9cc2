"""A route's queue has a limit: past it a submit is a 429 with Retry-After, and nothing is queued.

The stack here is a gateway alone, so nothing drains the queues and their depth is exact.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import redis

from common.catalog import demo_catalog, write_catalog
from common.keys import Keys
from common.redis_server import RedisServer, free_port
from tests.support.stack import Stack, stack_env

MAX_QUEUE = 3
# Both routes get the small limit; each test fills its own so they do not depend on order.
LIMITED_ROUTES = ("sd", "flux", "ltx")
T2I = {"prompt": "a lighthouse", "width": 128, "height": 128, "num_inference_steps": 2}
T2V = {"prompt": "waves", "width": 64, "height": 64, "num_frames": 9, "num_inference_steps": 2}


@pytest.fixture(scope="module")
def gateway_only(
    redis_server: RedisServer, tiny_models: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    catalog = demo_catalog(tiny_models)
    routes = {
        name: route.model_copy(update={"max_queue": MAX_QUEUE}) if name in LIMITED_ROUTES else route
        for name, route in catalog.routes.items()
    }
    workdir = tmp_path_factory.mktemp("backpressure")
    models_file = workdir / "models.toml"
    write_catalog(catalog.model_copy(update={"routes": routes}), models_file)
    port = free_port()
    env = stack_env(
        redis_url=redis_server.url,
        prefix="backpressure:",
        models_file=models_file,
        workdir=workdir,
        port=port,
    )
    stack = Stack(name="backpressure", workdir=workdir, env=env, port=port)
    stack.start("gateway")
    yield stack
    stack.stop_all()


@pytest.fixture(scope="module")
def client(gateway_only: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway_only.base_url, timeout=30) as http:
        yield http


@pytest.fixture
def r(gateway_only: Stack) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(gateway_only.env["REDIS_URL"], decode_responses=True)
    yield client
    client.close()


def queued(client: httpx.Client, model: str) -> int:
    listing = client.get("/api/models").raise_for_status().json()
    depth: int = next(m["queued"] for m in listing if m["name"] == model)
    return depth


def added(r: redis.Redis, keys: Keys, model: str) -> int:
    stream = keys.backlog(model)
    return int(r.xinfo_stream(stream)["entries-added"]) if r.exists(stream) else 0


def assert_queue_full(response: httpx.Response) -> None:
    assert response.status_code == 429, response.text
    body = response.json()
    assert body["error"] == "queue_full" and body["message"] and body["fields"] == []
    assert int(response.headers["retry-after"]) >= 1


def test_a_full_queue_refuses_submits_until_there_is_room(
    client: httpx.Client, r: redis.Redis, gateway_only: Stack
) -> None:
    keys = Keys(gateway_only.prefix)
    assert queued(client, "sd") == 0
    ids = [client.post("/api/sd/t2i", json=T2I).raise_for_status().json() for _ in range(MAX_QUEUE)]
    assert len({body["session_id"] for body in ids}) == MAX_QUEUE
    assert queued(client, "sd") == MAX_QUEUE
    jobs_before = sum(1 for _ in r.scan_iter(keys.job("*")))

    assert_queue_full(client.post("/api/sd/t2i", json=T2I))
    # /v1/generate renders on sd too, so its queue is the same one.
    assert_queue_full(client.post("/v1/generate", json={"prompt": "a lighthouse"}))

    assert added(r, keys, "sd") == MAX_QUEUE
    assert sum(1 for _ in r.scan_iter(keys.job("*"))) == jobs_before
    assert queued(client, "sd") == MAX_QUEUE
    # Another route's queue is its own.
    other = client.post("/api/qwen-multi-angle/t2i", json=T2I)
    assert other.status_code == 200, other.text


def test_retries_around_a_full_queue(
    client: httpx.Client, r: redis.Redis, gateway_only: Stack
) -> None:
    keys = Keys(gateway_only.prefix)
    accepted = {"Idempotency-Key": str(uuid.uuid4())}
    first = client.post("/api/flux/t2i", json=T2I, headers=accepted).raise_for_status().json()
    for _ in range(MAX_QUEUE - 1):
        client.post("/api/flux/t2i", json=T2I).raise_for_status()

    # A retry of a job already queued is answered even though the queue is full.
    again = client.post("/api/flux/t2i", json=T2I, headers=accepted)
    assert again.status_code == 200 and again.json() == first

    # A new request is turned away, and its key is not spent on the refusal.
    refused = {"Idempotency-Key": str(uuid.uuid4())}
    assert_queue_full(client.post("/api/flux/t2i", json=T2I, headers=refused))
    assert added(r, keys, "flux") == MAX_QUEUE

    # A job ends: its entry leaves the route's backlog, as the job's terminal change does.
    stream = keys.backlog("flux")
    entries: list[tuple[str, dict[str, str]]]
    entries = r.xrange(stream, count=1)  # type: ignore[assignment]  # redis-py's union return
    r.xdel(stream, entries[0][0])
    retried = client.post("/api/flux/t2i", json=T2I, headers=refused)
    assert retried.status_code == 200, retried.text
    assert "idempotent-replayed" not in retried.headers
    assert retried.json()["session_id"] != first["session_id"]
    assert queued(client, "flux") == MAX_QUEUE


def test_concurrent_submits_never_overshoot_the_limit(gateway_only: Stack, r: redis.Redis) -> None:
    """The depth check and the append are one atomic step, so a burst cannot slip past it."""

    def post(_: int) -> int:
        with httpx.Client(base_url=gateway_only.base_url, timeout=30) as http:
            return http.post("/api/ltx/t2v", json=T2V).status_code

    with ThreadPoolExecutor(max_workers=12) as pool:
        codes = sorted(pool.map(post, range(12)))
    assert codes == [200] * MAX_QUEUE + [429] * (12 - MAX_QUEUE)
    assert added(r, Keys(gateway_only.prefix), "ltx") == MAX_QUEUE
