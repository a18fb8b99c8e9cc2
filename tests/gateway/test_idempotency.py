"""``Idempotency-Key``: a retried submit gets the original job and queues nothing new."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import redis

from common.keys import Keys
from tests.support.client import png_bytes, wait_terminal
from tests.support.stack import Stack
from tests.support.waiting import wait_for

T2I = {"prompt": "a lighthouse", "width": 128, "height": 128, "num_inference_steps": 2}
I2I_FORM = {"prompt": "a lighthouse at dusk", "strength": "0.5", "num_inference_steps": "4"}
CONCURRENT_SUBMITS = 8
SUBMIT_PATHS = ("/api/{model}/t2i", "/api/{model}/i2i", "/api/{model}/t2v", "/api/{model}/i2v")


@dataclass(frozen=True)
class Queued:
    """What the submits so far left in Redis: job records, and entries ever added to a stream."""

    jobs: int
    added: int


class Ledger:
    def __init__(self, stack: Stack) -> None:
        self._redis = redis.Redis.from_url(stack.env["REDIS_URL"], decode_responses=True)
        self._keys = Keys(stack.prefix)

    def now(self, model: str = "sd") -> Queued:
        stream = self._keys.backlog(model)
        added = (
            self._redis.xinfo_stream(stream)["entries-added"] if self._redis.exists(stream) else 0
        )
        jobs = sum(1 for _ in self._redis.scan_iter(self._keys.job("*"), count=1000))
        return Queued(jobs=jobs, added=added)

    def expire_job(self, job_id: str) -> None:
        """What ``task_ttl_s`` does to a finished job's record, only sooner."""
        self._redis.pexpire(self._keys.job(job_id), 1)

    def close(self) -> None:
        self._redis.close()


@pytest.fixture(scope="module")
def client(local_stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=local_stack.base_url, timeout=30) as http:
        yield http


@pytest.fixture
def ledger(local_stack: Stack) -> Iterator[Ledger]:
    found = Ledger(local_stack)
    yield found
    found.close()


def new_key() -> dict[str, str]:
    return {"Idempotency-Key": str(uuid.uuid4())}


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["error"] == code and body["message"], body
    return body


def test_same_key_same_request_returns_the_original_job(
    client: httpx.Client, ledger: Ledger
) -> None:
    key, before = new_key(), ledger.now()
    # No seed: the gateway picks a random one, and the retry must still match.
    first = client.post("/api/sd/t2i", json=T2I, headers=key)
    again = client.post("/api/sd/t2i", json=T2I, headers=key)

    assert first.status_code == again.status_code == 200, (first.text, again.text)
    assert again.json() == first.json()
    assert "idempotent-replayed" not in first.headers
    assert again.headers["idempotent-replayed"] == "true"
    assert ledger.now() == Queued(jobs=before.jobs + 1, added=before.added + 1)


def test_same_key_different_request_is_a_conflict(client: httpx.Client, ledger: Ledger) -> None:
    key = new_key()
    assert client.post("/api/sd/t2i", json=T2I, headers=key).status_code == 200
    before = ledger.now()

    other = client.post("/api/sd/t2i", json={**T2I, "prompt": "a windmill"}, headers=key)
    assert_error(other, 409, "idempotency_key_reused")
    elsewhere = client.post("/v1/generate", json={"prompt": "a lighthouse"}, headers=key)
    assert_error(elsewhere, 409, "idempotency_key_reused")
    assert ledger.now() == before


def test_without_a_key_every_submit_is_a_new_job(client: httpx.Client, ledger: Ledger) -> None:
    before = ledger.now()
    ids = {client.post("/api/sd/t2i", json=T2I).json()["session_id"] for _ in range(2)}
    assert len(ids) == 2
    assert ledger.now() == Queued(jobs=before.jobs + 2, added=before.added + 2)


def test_v1_generate_replays_with_its_own_body_shape(client: httpx.Client, ledger: Ledger) -> None:
    key, before = new_key(), ledger.now()
    body = {"prompt": "a lighthouse", "style_id": 1, "width": 128, "height": 128}
    first = client.post("/v1/generate", json={**body, "num_inference_steps": 2}, headers=key)
    again = client.post("/v1/generate", json={**body, "num_inference_steps": 2}, headers=key)

    assert first.status_code == again.status_code == 200, (first.text, again.text)
    assert set(first.json()) == {"job_id"}
    assert again.json() == first.json()
    assert ledger.now() == Queued(jobs=before.jobs + 1, added=before.added + 1)


def test_multipart_fingerprint_covers_the_image(client: httpx.Client, ledger: Ledger) -> None:
    key, before = new_key(), ledger.now()
    image = png_bytes(128, 128)

    def submit(data: bytes, name: str = "in.png") -> httpx.Response:
        files = {"image": (name, data, "image/png")}
        return client.post("/api/sd/i2i", files=files, data=I2I_FORM, headers=key)

    first = submit(image)
    # Same bytes under another file name are the same request.
    again = submit(image, name="renamed.png")
    assert first.status_code == again.status_code == 200, (first.text, again.text)
    assert again.json()["session_id"] == first.json()["session_id"]
    assert ledger.now() == Queued(jobs=before.jobs + 1, added=before.added + 1)

    assert_error(submit(png_bytes(128, 128, color=(10, 10, 250))), 409, "idempotency_key_reused")
    assert ledger.now() == Queued(jobs=before.jobs + 1, added=before.added + 1)


def test_concurrent_submits_with_one_key_make_one_job(
    client: httpx.Client, ledger: Ledger, local_stack: Stack
) -> None:
    key, before = new_key(), ledger.now()
    start = threading.Barrier(CONCURRENT_SUBMITS)

    def submit(_: int) -> httpx.Response:
        # A connected client per thread, released together, so the submits overlap.
        with httpx.Client(base_url=local_stack.base_url, timeout=30) as own:
            own.get("/").raise_for_status()
            start.wait(timeout=30)
            return own.post("/api/sd/t2i", json=T2I, headers=key)

    with ThreadPoolExecutor(max_workers=CONCURRENT_SUBMITS) as pool:
        responses = list(pool.map(submit, range(CONCURRENT_SUBMITS)))

    assert [r.status_code for r in responses] == [200] * CONCURRENT_SUBMITS, [
        r.text for r in responses
    ]
    assert len({r.json()["session_id"] for r in responses}) == 1
    assert sum("idempotent-replayed" not in r.headers for r in responses) == 1
    assert ledger.now() == Queued(jobs=before.jobs + 1, added=before.added + 1)


def test_a_replay_after_its_job_expired_says_so_and_queues_nothing(
    client: httpx.Client, ledger: Ledger
) -> None:
    key = new_key()
    first = client.post("/api/sd/t2i", json=T2I, headers=key)
    job_id: str = first.raise_for_status().json()["session_id"]
    wait_terminal(client, f"/api/{job_id}/status")
    ledger.expire_job(job_id)
    wait_for(
        lambda: client.get(f"/api/{job_id}/status").status_code == 404,
        timeout_s=10,
        what="the finished job's record to expire",
    )
    before = ledger.now()

    for _ in range(2):  # the key keeps its answer: no second job on a later retry either
        body = assert_error(
            client.post("/api/sd/t2i", json=T2I, headers=key), 410, "idempotency_job_expired"
        )
        assert job_id in body["message"] and "new key" in body["message"]
    other = client.post("/api/sd/t2i", json={**T2I, "prompt": "a windmill"}, headers=key)
    assert_error(other, 409, "idempotency_key_reused")
    assert ledger.now() == before


@pytest.mark.parametrize("bad_key", ["k" * 256, ""])
def test_unusable_key_is_refused_before_anything_is_queued(
    client: httpx.Client, ledger: Ledger, bad_key: str
) -> None:
    before = ledger.now()
    for path, kwargs in (
        ("/api/sd/t2i", {"json": T2I}),
        ("/v1/generate", {"json": {"prompt": "a lighthouse"}}),
        ("/api/sd/i2i", {"files": {"image": ("in.png", png_bytes(128, 128), "image/png")}}),
    ):
        response = client.post(path, headers={"Idempotency-Key": bad_key}, **kwargs)
        body = assert_error(response, 422, "invalid_request")
        assert [f["field"] for f in body["fields"]] == ["Idempotency-Key"]
    assert ledger.now() == before
    longest = str(uuid.uuid4()).ljust(255, "k")
    assert client.post("/api/sd/t2i", json=T2I, headers={"Idempotency-Key": longest}).is_success


def test_every_submit_route_documents_the_header(client: httpx.Client) -> None:
    paths = client.get("/openapi.json").raise_for_status().json()["paths"]
    submit_paths = [*SUBMIT_PATHS, "/v1/generate"]
    for path in submit_paths:
        op = paths[path]["post"]
        headers = {p["name"]: p for p in op["parameters"] if p["in"] == "header"}
        assert "Idempotency-Key" in headers, path
        assert headers["Idempotency-Key"]["description"], path
        assert {"409", "429"} <= set(op["responses"]), path
