"""The result cache on a live stack (gateway, worker on the tiny SD checkpoint, uploader, local
storage, API keys): an identical seeded request is answered with the first render's stored
bytes and no render; ``cache: false``, unseeded requests, another tenant and a changed render
fingerprint all render."""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis import Redis

from common.catalog import Catalog, write_catalog
from common.redis_server import RedisServer, free_port
from tests.conftest import _stack
from tests.support.client import read_feed, wait_terminal
from tests.support.keys import create_key
from tests.support.stack import Stack
from tests.support.waiting import wait_for

SMALL = {"width": 64, "height": 64, "num_inference_steps": 2}
SERVED_FROM_CACHE = "Served from cache"
RENDERED = "Generation completed successfully"


@pytest.fixture(scope="module")
def stack(
    redis_server: RedisServer, models_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    stack = _stack(
        "cache",
        ("uploader", "gateway"),
        redis_server,
        models_file,
        tmp_path_factory,
        {"DARKROOM_AUTH": "keys", "DARKROOM_METRICS_PORT": str(free_port())},
    )
    stack.start("worker", env={"DARKROOM_ROUTES": "sd"})
    yield stack
    stack.stop_all()


@pytest.fixture(scope="module")
def redis(redis_server: RedisServer) -> Iterator[Redis]:
    client = Redis.from_url(redis_server.url, decode_responses=True)
    yield client
    client.close()


def tenant(stack: Stack) -> httpx.Client:
    key = create_key(stack, f"t-{uuid.uuid4().hex[:10]}")
    return httpx.Client(
        base_url=stack.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=30
    )


@pytest.fixture
def alice(stack: Stack) -> Iterator[httpx.Client]:
    with tenant(stack) as client:
        yield client


def t2i(client: httpx.Client, **body: Any) -> dict[str, Any]:
    """Submit on seed 1's t2i and wait for the end; the final status plus the job id."""
    answer = client.post("/api/sd/t2i", json={**SMALL, **body})
    assert answer.status_code == 200, answer.text
    job_id = answer.json()["session_id"]
    status = wait_terminal(client, f"/api/{job_id}/status")
    assert status["status"] == "completed", status
    return status


def generate(client: httpx.Client, **body: Any) -> dict[str, Any]:
    answer = client.post("/v1/generate", json={**SMALL, **body})
    assert answer.status_code == 200, answer.text
    job_id = answer.json()["job_id"]
    status = wait_terminal(client, f"/v1/jobs/{job_id}")
    assert status["status"] == "SUCCESS", status
    return status


def rendered_jobs(stack: Stack) -> set[str]:
    """The jobs the worker rendered, from its log."""
    found = set()
    for line in stack.log("worker").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("event") == "job.rendered":
            found.add(entry["job_id"])
    return found


def stored_bytes(stack: Stack, url: str) -> bytes:
    """The stored file a local result URL names, read from the output directory."""
    key = url.split("/output/", 1)[1]
    return (stack.workdir / "output" / key).read_bytes()


def cache_metrics(stack: Stack) -> dict[str, float]:
    url = f"http://127.0.0.1:{stack.env['DARKROOM_METRICS_PORT']}/metrics"
    text = httpx.get(url).raise_for_status().text
    totals: dict[str, float] = {"hits": 0.0, "misses": 0.0}
    for line in text.splitlines():
        for name in totals:
            if line.startswith(f"darkroom_result_cache_{name}_total{{"):
                totals[name] += float(line.split()[-1])
    return totals


def test_an_identical_seeded_request_is_served_from_the_cache(
    stack: Stack, alice: httpx.Client, redis: Redis
) -> None:
    prompt = f"a lighthouse {uuid.uuid4().hex[:6]}"
    before = cache_metrics(stack)
    first = t2i(alice, prompt=prompt, seed=42)
    assert first["message"] == RENDERED
    assert first["session_id"] in rendered_jobs(stack)

    second = t2i(alice, prompt=prompt, seed=42)
    assert second["message"] == SERVED_FROM_CACHE
    assert second["progress"] == 100 and second["error"] is None
    original = stored_bytes(stack, first["result_url"])
    assert stored_bytes(stack, second["result_url"]) == original
    assert httpx.get(second["result_url"]).raise_for_status().content == original
    # No GPU: the worker never saw it, and it went from pending straight to completed.
    assert second["session_id"] not in rendered_jobs(stack)
    feed = read_feed(alice, f"/api/{second['session_id']}/events", last_event_id=0)
    assert [(e.data["status"], e.data["message"]) for e in feed] == [
        ("pending", "Task submitted. Use /api/{session_id}/status to check progress."),
        ("completed", SERVED_FROM_CACHE),
    ]
    # And the uploader acked it: nothing is left to retry.
    wait_for(
        lambda: redis.xlen(f"{stack.prefix}rendered") == 0,
        timeout_s=10,
        what="the rendered stream drained",
    )
    after = cache_metrics(stack)
    assert after["hits"] == before["hits"] + 1
    assert after["misses"] == before["misses"] + 1
    # Usage: two jobs completed, the GPU time and bytes of one render.
    first_gpu_s = redis.hget(f"{stack.prefix}job:{first['session_id']}", "gpu_s")
    assert first_gpu_s is not None
    assert redis.hget(f"{stack.prefix}job:{second['session_id']}", "gpu_s") is None
    total = alice.get("/v1/usage").raise_for_status().json()["total"]
    assert [(j["model"], j["completed"]) for j in total["jobs"]] == [("sd", 2)]
    assert total["gpu_s"] == pytest.approx(float(first_gpu_s))
    assert total["output_bytes"] == len(original)

    # Seed 2 caches too (its own request: the same route, but a different prompt here).
    third = generate(alice, prompt=prompt + " at dusk", seed=5)
    fourth = generate(alice, prompt=prompt + " at dusk", seed=5)
    assert fourth["job_id"] not in rendered_jobs(stack)
    assert stored_bytes(stack, fourth["result_urls"][0]) == stored_bytes(
        stack, third["result_urls"][0]
    )


def test_cache_false_renders_again_the_same_bytes(stack: Stack, alice: httpx.Client) -> None:
    prompt = f"a harbour {uuid.uuid4().hex[:6]}"
    first = t2i(alice, prompt=prompt, seed=7)
    again = t2i(alice, prompt=prompt, seed=7, cache=False)
    assert again["message"] == RENDERED
    assert again["session_id"] in rendered_jobs(stack)
    # Seeded renders are deterministic: what the cache serves is what a render gives.
    assert stored_bytes(stack, again["result_url"]) == stored_bytes(stack, first["result_url"])


def test_unseeded_requests_are_never_cached(
    stack: Stack, alice: httpx.Client, redis: Redis
) -> None:
    prompt = f"a meadow {uuid.uuid4().hex[:6]}"
    # Seed 1 without a seed: the gateway picks one; asking again with that seed renders, so the
    # first render was not kept.
    first = t2i(alice, prompt=prompt)
    record = redis.hget(f"{stack.prefix}job:{first['session_id']}", "params")
    assert isinstance(record, str)
    chosen = json.loads(record)["seed"]
    named = t2i(alice, prompt=prompt, seed=chosen)
    assert named["message"] == RENDERED and named["session_id"] in rendered_jobs(stack)

    # Seed 2 with seed -1: likewise.
    random_seed = generate(alice, prompt=prompt)
    again = generate(alice, prompt=prompt, seed=random_seed["seed"])
    assert again["job_id"] in rendered_jobs(stack)

    # And seed -1 twice renders twice.
    twice = [generate(alice, prompt=prompt + "!", seed=-1) for _ in range(2)]
    assert {s["job_id"] for s in twice} <= rendered_jobs(stack)


def test_another_tenant_does_not_hit(stack: Stack, alice: httpx.Client) -> None:
    prompt = f"a fox {uuid.uuid4().hex[:6]}"
    t2i(alice, prompt=prompt, seed=3)
    assert t2i(alice, prompt=prompt, seed=3)["message"] == SERVED_FROM_CACHE
    with tenant(stack) as bob:
        bobs = t2i(bob, prompt=prompt, seed=3)
        assert bobs["message"] == RENDERED and bobs["session_id"] in rendered_jobs(stack)
        # Bob's own render is his to reuse.
        assert t2i(bob, prompt=prompt, seed=3)["message"] == SERVED_FROM_CACHE


def worker_fingerprints(redis: Redis, stack: Stack) -> list[str]:
    beats = [json.loads(raw) for raw in redis.hvals(f"{stack.prefix}workers")]
    return [beat["fingerprints"]["sd"] for beat in beats if "sd" in beat.get("fingerprints", {})]


def test_a_changed_render_fingerprint_misses(
    stack: Stack, alice: httpx.Client, redis: Redis, models_file: Path, tmp_path: Path
) -> None:
    prompt = f"a bridge {uuid.uuid4().hex[:6]}"
    first = t2i(alice, prompt=prompt, seed=11)
    assert t2i(alice, prompt=prompt, seed=11)["message"] == SERVED_FROM_CACHE
    (old,) = worker_fingerprints(redis, stack)

    # The same checkpoint copied elsewhere: the same bytes would come out, but the cache cannot
    # know that, so the worker now renders under another fingerprint.
    catalog = Catalog.load(models_file)
    sd = catalog.routes["sd"]
    copy = tmp_path / "sd-copy"
    shutil.copytree(sd.weights, copy)
    moved = catalog.model_copy(
        update={"routes": {**catalog.routes, "sd": sd.model_copy(update={"weights": str(copy)})}}
    )
    write_catalog(moved, tmp_path / "models.toml")
    worker_env = {"DARKROOM_ROUTES": "sd"}
    stack.stop("worker")
    try:
        moved_file = {"DARKROOM_MODELS_FILE": str(tmp_path / "models.toml")}
        stack.start("worker", env=worker_env | moved_file)
        new = wait_for(
            lambda: [fp for fp in worker_fingerprints(redis, stack) if fp != old],
            timeout_s=30,
            what="the new fingerprint in a heartbeat",
        )
        assert old not in worker_fingerprints(redis, stack) and new
        after = t2i(alice, prompt=prompt, seed=11)
        assert after["message"] == RENDERED and after["session_id"] in rendered_jobs(stack)
        assert stored_bytes(stack, after["result_url"]) == stored_bytes(stack, first["result_url"])
        assert t2i(alice, prompt=prompt, seed=11)["message"] == SERVED_FROM_CACHE
    finally:
        stack.stop("worker")
        stack.start("worker", env=worker_env)
