"""A key's quotas on two live gateway replicas sharing one Redis (``DARKROOM_AUTH=keys``): the
submit rate, jobs at once, the largest job cost and the input bytes a tenant may keep waiting.
No worker runs, so jobs wait in their queues and every count is exact."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from redis.asyncio import Redis as AsyncRedis

from common.jobs import JobStore
from common.keys import Keys
from common.redis_server import RedisServer, free_port
from common.schemas import JobStatus
from gateway.settings import GatewaySettings
from tests.conftest import _stack
from tests.support.client import noise_png
from tests.support.keys import create_key
from tests.support.stack import Stack
from tests.support.waiting import wait_for

T2I = {"prompt": "a lighthouse", "width": 128, "height": 128, "num_inference_steps": 2}
BURST = 20
DEFAULT_MAX_QUEUED = 3
# The smallest per-tenant cap the settings allow; two of the test's images pass it.
TENANT_INPUT_BYTES = 1024 * 1024
IMAGE_BYTES = 700 * 1024


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def replicas(
    redis_server: RedisServer, models_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Stack, str]]:
    """Two gateways of one deployment: the stack's own, and a second on another port."""
    stack = _stack(
        "quotas",
        ("gateway",),
        redis_server,
        models_file,
        tmp_path_factory,
        {
            "DARKROOM_AUTH": "keys",
            "DARKROOM_KEY_DEFAULT_MAX_QUEUED": str(DEFAULT_MAX_QUEUED),
            "DARKROOM_MAX_WAITING_INPUT_BYTES_PER_TENANT": str(TENANT_INPUT_BYTES),
        },
    )
    port = free_port()
    stack.start("gateway:b", env={"DARKROOM_PORT": str(port)}, wait=False)
    second = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        try:
            return httpx.get(second + "/", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(healthy, timeout_s=120, what="the second gateway")
    yield stack, second
    stack.stop_all()


@pytest.fixture(scope="module")
def admin_key(replicas: tuple[Stack, str]) -> str:
    return create_key(replicas[0], f"root-{uuid.uuid4().hex[:8]}", admin=True)


@pytest.fixture(scope="module")
def http(replicas: tuple[Stack, str]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=replicas[0].base_url, timeout=30) as client:
        yield client


@pytest.fixture
def r(replicas: tuple[Stack, str]) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(replicas[0].env["REDIS_URL"], decode_responses=True)
    yield client
    client.close()


def new_key(http: httpx.Client, admin_key: str, **limits: Any) -> tuple[str, str]:
    """A key made over HTTP with these limits: (its name, the key)."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    answer = http.post("/v1/keys", json={"name": name, **limits}, headers=bearer(admin_key))
    assert answer.status_code == 201, answer.text
    return name, answer.json()["key"]


def burst(urls: list[str], key: str, path: str, body: dict[str, Any]) -> list[httpx.Response]:
    """``BURST`` submits at once, spread over the replicas."""

    def post(i: int) -> httpx.Response:
        with httpx.Client(base_url=urls[i % len(urls)], timeout=30) as client:
            return client.post(path, json=body, headers=bearer(key))

    with ThreadPoolExecutor(max_workers=BURST) as pool:
        return list(pool.map(post, range(BURST)))


def urls(replicas: tuple[Stack, str]) -> list[str]:
    return [replicas[0].base_url, replicas[1]]


def jobs_of(r: redis.Redis, stack: Stack, tenant: str) -> int:
    """The tenant's jobs queued or running, as the quota counts them."""
    return int(r.zcard(Keys(stack.prefix).tenant_jobs(tenant)))


def queued(r: redis.Redis, stack: Stack, model: str) -> int:
    return int(r.xlen(Keys(stack.prefix).backlog(model)))


def test_keys_take_limits_over_http_and_list_them(
    http: httpx.Client, admin_key: str, r: redis.Redis, replicas: tuple[Stack, str]
) -> None:
    admin = bearer(admin_key)
    name = f"t-{uuid.uuid4().hex[:10]}"
    limits = {"rate_per_min": 30, "max_queued": 4, "max_priority": "low", "max_cost": 12.5}
    created = http.post("/v1/keys", json={"name": name, **limits}, headers=admin)
    assert created.status_code == 201, created.text
    assert {k: created.json()[k] for k in limits} == limits
    # Left out: the deployment's defaults for new keys; null: no limit.
    plain, _ = new_key(http, admin_key)
    free, _ = new_key(http, admin_key, rate_per_min=None, max_queued=None, max_cost=None)

    listed = {item["name"]: item for item in http.get("/v1/keys", headers=admin).json()}
    assert {k: listed[name][k] for k in limits} == limits
    assert listed[plain]["max_queued"] == DEFAULT_MAX_QUEUED
    assert (
        listed[plain]["rate_per_min"]
        == GatewaySettings.model_fields["key_default_rate_per_min"].get_default()
        and listed[plain]["max_priority"] == "normal"
    )
    assert (listed[free]["rate_per_min"], listed[free]["max_queued"]) == (None, None)
    # The record in Redis holds them readably, for whoever inspects it.
    record = r.hgetall(Keys(replicas[0].prefix).tenant(name))
    assert (record["rate_per_min"], record["max_priority"]) == ("30", "low")

    for bad in (
        {"rate_per_min": 0},
        {"max_queued": -1},
        {"max_priority": "urgent"},
        {"max_cost": 0},
        {"max_cost": "lots"},
        {"burst": 3},
    ):
        refused = http.post(
            "/v1/keys", json={"name": f"b-{uuid.uuid4().hex[:8]}", **bad}, headers=admin
        )
        assert refused.status_code == 422, (bad, refused.text)
        assert refused.json()["error"] == "invalid_request"

    document = http.get("/openapi.json").json()
    create = document["components"]["schemas"]["CreateKeyRequest"]["properties"]
    assert {"rate_per_min", "max_queued", "max_priority", "max_cost"} <= set(create)
    submit = document["paths"]["/v1/generate"]["post"]["responses"]
    assert {"RateLimit", "RateLimit-Policy", "Retry-After"} <= set(submit["429"]["headers"])
    assert "max_cost" in submit["422"]["description"]


RATELIMIT = re.compile(r'^"per-minute";r=(\d+);t=(\d+)$')


def test_the_rate_limit_holds_across_replicas_under_a_burst(
    http: httpx.Client, admin_key: str, r: redis.Redis, replicas: tuple[Stack, str]
) -> None:
    name, key = new_key(http, admin_key, rate_per_min=7, max_queued=None)
    before = queued(r, replicas[0], "sd")
    answers = burst(urls(replicas), key, "/api/sd/t2i", T2I)

    accepted = [a for a in answers if a.status_code == 200]
    refused = [a for a in answers if a.status_code != 200]
    assert len(accepted) == 7, [a.text for a in refused]
    assert queued(r, replicas[0], "sd") == before + 7 and jobs_of(r, replicas[0], name) == 7
    policy = '"per-minute";q=7;w=60'
    # Each accepted request saw the quota one lower: the count is one, shared by both replicas.
    left = sorted(int(RATELIMIT.match(a.headers["RateLimit"])[1]) for a in accepted)  # type: ignore[index]
    assert left == list(range(7))
    assert all(a.headers["RateLimit-Policy"] == policy for a in accepted)
    for answer in refused:
        assert answer.status_code == 429, answer.text
        body = answer.json()
        assert body["error"] == "rate_limited" and "7 submit requests a minute" in body["message"]
        retry_after = int(answer.headers["Retry-After"])
        assert 1 <= retry_after <= 60
        assert answer.headers["RateLimit-Policy"] == policy
        remaining, reset_s = RATELIMIT.match(answer.headers["RateLimit"]).groups()  # type: ignore[union-attr]
        assert int(remaining) == 0 and int(reset_s) == retry_after

    # Another key's rate is its own; seed 2's route counts for the same key.
    _, other = new_key(http, admin_key, rate_per_min=7)
    assert http.post("/v1/generate", json=T2I, headers=bearer(other)).status_code == 200
    assert http.post("/v1/generate", json=T2I, headers=bearer(key)).status_code == 429


def test_max_queued_holds_across_replicas_and_frees_up_as_jobs_end(
    http: httpx.Client, admin_key: str, r: redis.Redis, replicas: tuple[Stack, str]
) -> None:
    stack, second = replicas
    name, key = new_key(http, admin_key, rate_per_min=None, max_queued=5)
    before = queued(r, stack, "flux")
    answers = burst(urls(replicas), key, "/api/flux/t2i", T2I)

    accepted = [a.json()["session_id"] for a in answers if a.status_code == 200]
    assert len(accepted) == 5
    assert queued(r, stack, "flux") == before + 5 and jobs_of(r, stack, name) == 5
    for answer in (a for a in answers if a.status_code != 200):
        assert answer.status_code == 429, answer.text
        body = answer.json()
        assert body["error"] == "max_queued_exceeded" and "max_queued is 5" in body["message"]
        assert int(answer.headers["Retry-After"]) >= 1

    # One tenant at its limit does not stop another.
    _, other = new_key(http, admin_key, max_queued=5)
    assert http.post("/api/flux/t2i", json=T2I, headers=bearer(other)).status_code == 200

    # A canceled job frees its place, on every replica.
    with httpx.Client(base_url=second, timeout=30) as b:
        assert b.delete(f"/api/{accepted[0]}", headers=bearer(key)).status_code == 200
        assert b.post("/api/flux/t2i", json=T2I, headers=bearer(key)).status_code == 200
        assert b.post("/api/flux/t2i", json=T2I, headers=bearer(key)).status_code == 429

    # So does a finished one: the uploader's terminal change, as the uploader makes it.
    async def complete(job_id: str) -> None:
        client = AsyncRedis.from_url(stack.env["REDIS_URL"], decode_responses=True)
        try:
            jobs = JobStore(client, Keys(stack.prefix), task_ttl_s=60)
            assert await jobs.emit(job_id, status=JobStatus.COMPLETED, result_urls=["x"])
        finally:
            await client.aclose()

    asyncio.run(complete(accepted[1]))
    assert http.post("/api/flux/t2i", json=T2I, headers=bearer(key)).status_code == 200
    assert jobs_of(r, stack, name) == 5


def test_a_job_over_max_cost_is_refused_before_anything_is_queued(
    http: httpx.Client, admin_key: str, r: redis.Redis, replicas: tuple[Stack, str]
) -> None:
    stack = replicas[0]
    name, key = new_key(http, admin_key, max_cost=10, rate_per_min=None)
    # 512 × 512 × 50 steps = 13.1 megapixel-steps.
    big = {"prompt": "a harbour", "width": 512, "height": 512, "num_inference_steps": 50}
    before = (queued(r, stack, "sd"), len(list(r.scan_iter(Keys(stack.prefix).job("*")))))
    once = {"Idempotency-Key": str(uuid.uuid4())}
    for path in ("/api/sd/t2i", "/v1/generate"):
        refused = http.post(path, json=big, headers=bearer(key) | once)
        assert refused.status_code == 422, refused.text
        body = refused.json()
        assert body["error"] == "max_cost_exceeded"
        assert "13.1 megapixel-steps" in body["message"] and "max_cost is 10.0" in body["message"]
    after = (queued(r, stack, "sd"), len(list(r.scan_iter(Keys(stack.prefix).job("*")))))
    assert after == before and jobs_of(r, stack, name) == 0
    # Renders multiply: 256² × 10 steps is 0.66, but 6 angles and a base image make 4.6.
    small = {"prompt": "a harbour", "width": 256, "height": 256, "num_inference_steps": 10}
    assert http.post("/api/sd/t2i", json=small, headers=bearer(key) | once).status_code == 200
    _, tight = new_key(http, admin_key, max_cost=1)
    angled = http.post("/api/qwen-multi-angle/t2i", json=small, headers=bearer(tight))
    assert (angled.status_code, angled.json()["error"]) == (422, "max_cost_exceeded")
    assert http.post("/api/sd/t2i", json=small, headers=bearer(tight)).status_code == 200


def test_input_bytes_waiting_are_capped_per_tenant(
    http: httpx.Client, admin_key: str, r: redis.Redis, replicas: tuple[Stack, str]
) -> None:
    stack = replicas[0]
    name, key = new_key(http, admin_key, rate_per_min=None, max_queued=None)
    _, other = new_key(http, admin_key, rate_per_min=None, max_queued=None)
    form = {"prompt": "keep the shapes", "strength": "0.5", "num_inference_steps": "2"}

    def i2i(who: str, seed: int) -> httpx.Response:
        files = {"image": ("in.png", noise_png(IMAGE_BYTES, seed), "image/png")}
        return http.post("/api/sd/i2i", files=files, data=form, headers=bearer(who))

    first = i2i(key, 1)
    assert first.status_code == 200, first.text
    before = queued(r, stack, "sd")
    refused = i2i(key, 2)
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"] == "tenant_inputs_full"
    assert str(TENANT_INPUT_BYTES) in refused.json()["message"]
    assert int(refused.headers["Retry-After"]) >= 1
    assert queued(r, stack, "sd") == before and jobs_of(r, stack, name) == 1
    # Another tenant's share is its own.
    assert i2i(other, 3).status_code == 200
    # A job that ends gives its bytes back.
    assert http.delete(f"/api/{first.json()['session_id']}", headers=bearer(key)).status_code == 200
    assert i2i(key, 2).status_code == 200


def test_with_auth_off_only_the_global_limits_hold(
    redis_server: RedisServer, models_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """One tenant, ``local``, with no quotas: however tight the defaults for new keys and the
    per-tenant input cap, a local user is held only by the global limits."""
    stack = _stack(
        "quotas-off",
        ("gateway",),
        redis_server,
        models_file,
        tmp_path_factory,
        {
            "DARKROOM_AUTH": "off",
            "DARKROOM_KEY_DEFAULT_RATE_PER_MIN": "1",
            "DARKROOM_KEY_DEFAULT_MAX_QUEUED": "1",
            "DARKROOM_KEY_DEFAULT_MAX_COST": "0.001",
            "DARKROOM_MAX_WAITING_INPUT_BYTES_PER_TENANT": str(TENANT_INPUT_BYTES),
        },
    )
    try:
        with httpx.Client(base_url=stack.base_url, timeout=30) as client:
            for _ in range(3):
                answer = client.post("/api/sd/t2i", json=T2I)
                assert answer.status_code == 200, answer.text
                assert "RateLimit" not in answer.headers
            form = {"prompt": "keep the shapes", "strength": "0.5", "num_inference_steps": "2"}
            for seed in (1, 2):
                files = {"image": ("in.png", noise_png(IMAGE_BYTES, seed), "image/png")}
                answer = client.post("/api/sd/i2i", files=files, data=form)
                assert answer.status_code == 200, answer.text
    finally:
        stack.stop_all()
