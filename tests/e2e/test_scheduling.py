"""Scheduling through HTTP on a real Redis with a real worker: priority classes, fair share
between tenants (keys), ``--max-priority``. Judged by the order jobs complete in, never by time."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from common.keys import Keys
from common.redis_server import RedisServer
from tests.conftest import _stack
from tests.support.fleet import job_records, wait_all_terminal
from tests.support.keys import create_key
from tests.support.stack import Stack
from tests.support.waiting import wait_for

BODY = {"prompt": "p", "width": 64, "height": 64, "num_inference_steps": 2, "cache": False}


@pytest.fixture(scope="module")
def stack(
    redis_server: RedisServer, models_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    stack = _stack(
        "sched",
        ("worker", "uploader", "gateway"),
        redis_server,
        models_file,
        tmp_path_factory,
        extra={
            "DARKROOM_AUTH": "keys",
            "DARKROOM_KEY_DEFAULT_MAX_QUEUED": "200",
            "DARKROOM_ROUTES": "sd",  # loads in seconds: the tests queue on sd only
        },
    )
    yield stack
    stack.stop_all()


@pytest.fixture(scope="module")
def r(stack: Stack) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(stack.env["REDIS_URL"], decode_responses=True)
    yield client
    client.close()


def client(stack: Stack, key: str) -> httpx.Client:
    return httpx.Client(
        base_url=stack.base_url, timeout=30, headers={"Authorization": f"Bearer {key}"}
    )


def submit(http: httpx.Client, count: int, start_seed: int = 0, **fields: Any) -> list[str]:
    ids = []
    for seed in range(start_seed, start_seed + count):
        response = http.post("/api/sd/t2i", json={**BODY, "seed": seed, **fields})
        assert response.status_code == 200, response.text
        ids.append(str(response.json()["session_id"]))
    return ids


def completion_order(stack: Stack, r: redis.Redis, job_ids: list[str]) -> list[str]:
    records = wait_all_terminal(stack, r, job_ids, timeout_s=240)
    assert all(rec is not None and rec.status.value == "completed" for rec in records.values())
    done = {job_id: rec.updated_at or 0.0 for job_id, rec in records.items() if rec}
    return sorted(job_ids, key=lambda job_id: done[job_id])


def started(r: redis.Redis, keys: Keys, job_ids: list[str]) -> bool:
    return any(
        rec is not None and rec.status.value != "pending"
        for rec in job_records(r, keys, job_ids).values()
    )


def test_a_priority_above_the_keys_max_priority_is_refused_and_queues_nothing(
    stack: Stack, r: redis.Redis
) -> None:
    key = create_key(stack, "capped", options=("--max-priority", "low"))
    keys = Keys(stack.prefix)
    with client(stack, key) as http:
        before = r.xlen(keys.backlog("sd"))
        response = http.post("/api/sd/t2i", json={**BODY, "priority": "normal"})
        assert response.status_code == 403, response.text
        body = response.json()
        assert body["error"] == "priority_not_allowed" and "'low'" in body["message"]
        assert r.xlen(keys.backlog("sd")) == before
        assert http.post("/api/sd/t2i", json={**BODY, "priority": "low"}).status_code == 200
        form = {"prompt": "p", "priority": "high"}
        refused = http.post("/v1/generate", json={**form, "width": 64, "height": 64})
        assert refused.status_code == 403, refused.text


def test_a_high_job_overtakes_the_low_jobs_waiting(stack: Stack, r: redis.Redis) -> None:
    keys = Keys(stack.prefix)
    with client(stack, create_key(stack, "mixed", options=("--max-priority", "high"))) as http:
        lows = submit(http, 40, priority="low")
        wait_for(lambda: started(r, keys, lows), timeout_s=120, what="the worker to start")
        (high,) = submit(http, 1, start_seed=100, priority="high")
        order = completion_order(stack, r, [*lows, high])
    # Ahead of it at most the batch rendering and the one read ahead (sd batches up to 8).
    assert order.index(high) <= 2 * 8 + 8, order.index(high)
    assert len(order) - order.index(high) - 1 >= 40 - 24


def test_one_tenants_backlog_delays_anothers_job_by_about_one_batch(
    stack: Stack, r: redis.Redis
) -> None:
    with (
        client(stack, create_key(stack, "heavy")) as heavy,
        client(stack, create_key(stack, "light")) as light,
    ):
        backlog = submit(heavy, 40)
        (mine,) = submit(light, 1, start_seed=500)
        order = completion_order(stack, r, [*backlog, mine])
    done = [job for job in order if job in backlog]
    assert order.index(mine) < order.index(done[-5])
