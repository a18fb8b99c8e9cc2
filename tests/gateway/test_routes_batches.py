"""Batches through a live gateway with API keys (``DARKROOM_AUTH=keys``) and no worker, so every
job waits in its queue and every count is exact: a batch is refused whole or queued whole, one
key's batch is another's 404, an ``Idempotency-Key`` covers the whole batch, and cancel ends
what waits."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from common.keys import Keys
from common.redis_server import RedisServer
from tests.conftest import _stack
from tests.support.client import read_feed
from tests.support.keys import create_key
from tests.support.stack import Stack

ITEM = {"prompt": "a lighthouse", "width": 64, "height": 64, "num_inference_steps": 2}


@pytest.fixture(scope="module")
def stack(
    redis_server: RedisServer, models_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    found = _stack(
        "batches",
        ("gateway",),
        redis_server,
        models_file,
        tmp_path_factory,
        {"DARKROOM_AUTH": "keys", "DARKROOM_SSE_PING_S": "0.5"},
    )
    yield found
    found.stop_all()


@pytest.fixture(scope="module")
def http(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.base_url, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def admin(stack: Stack) -> str:
    return create_key(stack, f"root-{uuid.uuid4().hex[:8]}", admin=True)


@pytest.fixture
def r(stack: Stack) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(stack.env["REDIS_URL"], decode_responses=True)
    yield client
    client.close()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def new_key(http: httpx.Client, admin: str, **limits: Any) -> tuple[str, dict[str, str]]:
    """A key with these limits (none unless given): its name and its auth header."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    body = {"name": name, "rate_per_min": None, "max_queued": None, "max_cost": None, **limits}
    answer = http.post("/v1/keys", json=body, headers=bearer(admin))
    assert answer.status_code == 201, answer.text
    return name, bearer(answer.json()["key"])


def batch(n: int, **changes: Any) -> dict[str, Any]:
    return {"requests": [{**ITEM, "prompt": f"item {i}", **changes} for i in range(n)]}


def queued(r: redis.Redis, stack: Stack, tenant: str) -> int:
    """The tenant's jobs queued or running, as max_queued counts them."""
    return int(r.zcard(Keys(stack.prefix).tenant_jobs(tenant)))


def batches_of(r: redis.Redis, stack: Stack, tenant: str) -> int:
    keys = Keys(stack.prefix)
    return sum(r.hget(key, "tenant") == tenant for key in r.scan_iter(keys.batch("*")))


def test_one_invalid_item_refuses_a_batch_of_twenty_whole(
    http: httpx.Client, admin: str, r: redis.Redis, stack: Stack
) -> None:
    name, key = new_key(http, admin)
    depth = r.xlen(Keys(stack.prefix).backlog("sd"))
    for bad, field in (
        ({"width": 100}, "requests[13].width"),  # the route's own limit (a multiple of 8)
        ({"prompt": ""}, "requests[13].prompt"),  # the schema's
        ({"colour": "red"}, "requests[13].colour"),  # an unknown field
        ({"webhook": "http://127.0.0.1:9/hook"}, "requests[13].webhook"),  # a private address
    ):
        body = batch(20)
        body["requests"][13].update(bad)
        answer = http.post("/api/sd/batch", json=body, headers=key)
        assert answer.status_code == 422, answer.text
        assert [f["field"] for f in answer.json()["fields"]] == [field], answer.text
    assert http.post("/api/sd/batch", json={"requests": []}, headers=key).status_code == 422
    assert http.post("/api/sd/batch", json=batch(101), headers=key).status_code == 422
    assert http.post("/api/nope/batch", json=batch(2), headers=key).status_code == 404
    # Nothing of any of them was queued.
    assert queued(r, stack, name) == 0 and batches_of(r, stack, name) == 0
    assert r.xlen(Keys(stack.prefix).backlog("sd")) == depth

    answer = http.post("/api/sd/batch", json=batch(20), headers=key)
    assert answer.status_code == 200, answer.text
    assert len(set(answer.json()["session_ids"])) == 20
    assert queued(r, stack, name) == 20 and batches_of(r, stack, name) == 1


def test_a_costly_item_is_refused_by_its_index(
    http: httpx.Client, admin: str, r: redis.Redis, stack: Stack
) -> None:
    name, key = new_key(http, admin, max_cost=1.0)
    body = batch(3)
    body["requests"][2].update(width=512, height=512, num_inference_steps=50)
    answer = http.post("/api/sd/batch", json=body, headers=key)
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"] == "max_cost_exceeded"
    assert [f["field"] for f in answer.json()["fields"]] == ["requests[2]"]
    assert queued(r, stack, name) == 0


def test_a_batch_is_n_jobs_for_max_queued_and_one_request_for_the_rate(
    http: httpx.Client, admin: str, r: redis.Redis, stack: Stack
) -> None:
    name, key = new_key(http, admin, max_queued=5, rate_per_min=3)
    answer = http.post("/api/sd/batch", json=batch(6), headers=key)
    assert answer.status_code == 429, answer.text
    assert answer.json()["error"] == "max_queued_exceeded"
    assert int(answer.headers["Retry-After"]) >= 1
    assert queued(r, stack, name) == 0 and batches_of(r, stack, name) == 0

    answer = http.post("/v1/batches", json=batch(5), headers=key)
    assert answer.status_code == 200, answer.text
    assert answer.headers["RateLimit"].startswith('"per-minute";r=1;')  # two requests so far
    assert queued(r, stack, name) == 5
    answer = http.post("/api/sd/batch", json=batch(1), headers=key)
    assert answer.status_code == 429 and answer.json()["error"] == "max_queued_exceeded"
    assert queued(r, stack, name) == 5


def test_another_tenants_batch_is_404_and_an_admin_sees_it(http: httpx.Client, admin: str) -> None:
    _, owner = new_key(http, admin)
    _, other = new_key(http, admin)
    batch_id = http.post("/api/sd/batch", json=batch(2), headers=owner).json()["batch_id"]
    reads = (
        ("GET", f"/api/batches/{batch_id}"),
        ("GET", f"/api/batches/{batch_id}/events"),
        ("GET", f"/v1/batches/{batch_id}"),
        ("DELETE", f"/api/batches/{batch_id}"),
        ("POST", f"/v1/batches/{batch_id}/cancel"),
    )
    for method, path in reads:
        answer = http.request(method, path, headers=other)
        assert answer.status_code == 404, (method, path, answer.text)
        unknown = http.request(method, path.replace(batch_id, str(uuid.uuid4())), headers=other)
        assert unknown.status_code == 404 and unknown.json() == {
            **answer.json(),
            "message": unknown.json()["message"],
        }
        assert http.request(method, path).status_code == 401
    assert http.get(f"/api/batches/{batch_id}", headers=owner).status_code == 200
    assert http.get(f"/v1/batches/{batch_id}", headers=bearer(admin)).status_code == 200
    # Nothing was canceled by the other tenant's tries.
    assert http.get(f"/api/batches/{batch_id}", headers=owner).json()["status"] == "pending"


def test_an_idempotency_key_covers_the_whole_batch(
    http: httpx.Client, admin: str, r: redis.Redis, stack: Stack
) -> None:
    name, key = new_key(http, admin)
    once = key | {"Idempotency-Key": str(uuid.uuid4())}
    first = http.post("/api/sd/batch", json=batch(4), headers=once)
    again = http.post("/api/sd/batch", json=batch(4), headers=once)
    assert first.status_code == again.status_code == 200, again.text
    assert again.json() == first.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert queued(r, stack, name) == 4 and batches_of(r, stack, name) == 1
    # The same key with another batch is a conflict; nothing more is queued.
    other = http.post("/api/sd/batch", json=batch(5), headers=once)
    assert other.status_code == 409 and other.json()["error"] == "idempotency_key_reused"
    assert queued(r, stack, name) == 4


def test_cancel_ends_a_waiting_batch_and_its_feed(http: httpx.Client, admin: str) -> None:
    _, key = new_key(http, admin)
    submitted = http.post("/api/sd/batch", json=batch(3), headers=key).json()
    batch_id = submitted["batch_id"]
    status = http.get(f"/api/batches/{batch_id}", headers=key).json()
    assert status["status"] == "pending" and status["counts"]["pending"] == 3
    assert [job["session_id"] for job in status["jobs"]] == submitted["session_ids"]

    # One job canceled on its own: the batch is under way, not ended.
    assert http.delete(f"/api/{submitted['session_ids'][0]}", headers=key).status_code == 200
    status = http.get(f"/api/batches/{batch_id}", headers=key).json()
    assert status["status"] == "processing" and status["counts"]["canceled"] == 1

    answer = http.delete(f"/api/batches/{batch_id}", headers=key)
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "canceled" and answer.json()["progress"] == 100
    assert answer.json()["counts"] == {
        "pending": 0,
        "processing": 0,
        "completed": 0,
        "failed": 0,
        "canceled": 3,
    }
    assert http.delete(f"/api/batches/{batch_id}", headers=key).status_code == 409
    for job_id in submitted["session_ids"]:
        assert http.get(f"/api/{job_id}/status", headers=key).json()["status"] == "canceled"
    v1 = http.get(f"/v1/batches/{batch_id}", headers=key).json()
    assert v1["status"] == "REVOKED" and {j["status"] for j in v1["jobs"]} == {"REVOKED"}

    # The feed of an ended batch: its state, then the end; a resume past it is a 204.
    http.headers.update(key)
    try:
        events = read_feed(http, f"/api/batches/{batch_id}/events", timeout_s=30)
        assert [e.data["status"] for e in events] == ["canceled"]
        again = read_feed(
            http, f"/api/batches/{batch_id}/events", last_event_id=events[-1].id, timeout_s=30
        )
        assert again == []
    finally:
        for name in key:
            del http.headers[name]
