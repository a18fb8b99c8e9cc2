"""Webhooks end to end: gateway, worker, uploader and notifier on a Redis of their own, receivers on
loopback (allowed on purpose with DARKROOM_WEBHOOK_ALLOW_NETS), every signature checked by the
``standardwebhooks`` package. The retry schedule is seconds long instead of a day."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from common.jobs import JobStore
from common.keys import Keys
from common.redis_server import RedisServer
from common.schemas import JobSpec, JobStatus, RenderParams, Task, Webhook, utcnow
from common.tenants import LOCAL_TENANT, new_webhook_secret
from tests.conftest import _stack, redis_of_its_own
from tests.support.keys import create_key
from tests.support.receiver import Answer, Receiver
from tests.support.stack import Stack
from tests.support.waiting import wait_for

SCHEDULE_S = "0,0.5,0.5,1,2,4,8,16"
LOCAL_SECRET = new_webhook_secret()
# The worker waits this long after each step (a test aid), so LONG renders for at least 4 s
# however fast the machine: long enough for a progress event (at most one per 2 s) to come.
STEP_DELAY_S = 0.05
LONG = {"prompt": "a long render", "width": 64, "height": 64, "num_inference_steps": 80}
SMALL = {"prompt": "a small one", "width": 64, "height": 64, "num_inference_steps": 2}
TENANT = "hooks-tenant"


@pytest.fixture(scope="module")
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with redis_of_its_own(tmp_path_factory, "hooks-redis", appendonly=True) as server:
        yield server


@pytest.fixture(scope="module")
def stack(
    own_redis: RedisServer, models_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    extra = {
        "DARKROOM_AUTH": "keys",
        "DARKROOM_WEBHOOK_ALLOW_NETS": "127.0.0.0/8,::1/128",
        "DARKROOM_WEBHOOK_RETRY_SCHEDULE_S": SCHEDULE_S,
        "DARKROOM_WEBHOOK_TIMEOUT_S": "3",
        "DARKROOM_WEBHOOK_SECRET": LOCAL_SECRET,
        "DARKROOM_KEY_DEFAULT_RATE_PER_MIN": "none",
        "DARKROOM_KEY_DEFAULT_MAX_QUEUED": "none",
    }
    stack = _stack(
        "hooks",
        ("uploader", "gateway", "notifier"),
        own_redis,
        models_file,
        tmp_path_factory,
        extra,
    )
    stack.start(
        "worker", env={"DARKROOM_ROUTES": "sd", "DARKROOM_TEST_STEP_DELAY_S": str(STEP_DELAY_S)}
    )
    yield stack
    stack.stop_all()


@pytest.fixture(scope="module")
def key(stack: Stack) -> str:
    return create_key(stack, TENANT)


def webhook_secret(stack: Stack, *args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "common.cli", "keys", "webhook-secret", TENANT, *args],
        cwd=stack.workdir,
        env=stack.env,
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def secret(stack: Stack, key: str) -> str:
    return webhook_secret(stack)


@pytest.fixture(scope="module")
def http(stack: Stack, key: str) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=stack.base_url, headers=headers, timeout=30) as client:
        yield client


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver().start()
    yield receiver
    receiver.stop()


def submit(http: httpx.Client, body: dict[str, Any], url: str, **hook: Any) -> str:
    answer = http.post("/api/sd/t2i", json=body | {"webhook": url} | hook)
    assert answer.status_code == 200, answer.text
    return str(answer.json()["session_id"])


def log_of(http: httpx.Client, job_id: str) -> list[dict[str, Any]]:
    answer = http.get(f"/v1/jobs/{job_id}/webhooks")
    assert answer.status_code == 200, answer.text
    deliveries: list[dict[str, Any]] = answer.json()["deliveries"]
    return deliveries


def wait_delivered(http: httpx.Client, job_id: str, timeout_s: float = 60) -> dict[str, Any]:
    def ended() -> bool:
        found = log_of(http, job_id)
        return any(d["type"] != "job.progress" and d["state"] != "pending" for d in found) and (
            any(d["type"] in ("job.completed", "job.failed", "job.canceled") for d in found)
        )

    wait_for(ended, timeout_s=timeout_s, what=f"the webhook of {job_id} to settle")
    return [d for d in log_of(http, job_id) if d["type"] != "job.progress"][-1]


def test_each_filter_gets_its_events_signed_by_the_tenants_secret(
    http: httpx.Client, secret: str, receiver: Receiver
) -> None:
    everything = submit(
        http, LONG, receiver.url, webhook_events_filter=["start", "progress", "completed"]
    )
    made = http.post("/v1/generate", json=SMALL | {"webhook": receiver.url})
    assert made.status_code == 200, made.text
    ended_only = made.json()["job_id"]
    wait_delivered(http, everything, timeout_s=120)
    wait_delivered(http, ended_only)

    seen = receiver.of_job(everything)
    payloads = [r.verified(secret) for r in seen]  # raises unless the signature holds
    types = [p["type"] for p in payloads]
    assert types[0] == "job.started" and types[-1] == "job.completed", types
    assert "job.progress" in types, types
    progress_at = [r.at for r, t in zip(seen, types, strict=True) if t == "job.progress"]
    assert all(b - a >= 1.5 for a, b in zip(progress_at, progress_at[1:], strict=False))
    assert len({r.webhook_id for r in seen}) == len(seen)  # one id per event
    done = payloads[-1]["data"]
    # Seed 1's fields: a link to the result, never its bytes.
    assert done["session_id"] == everything and done["status"] == "completed"
    assert done["result_url"].startswith("http") and done["progress"] == 100

    (only,) = receiver.of_job(ended_only)
    payload = only.verified(secret)
    assert payload["type"] == "job.completed"
    # Seed 2's fields: its status names and the seed used.
    assert payload["data"]["job_id"] == ended_only and payload["data"]["status"] == "SUCCESS"
    assert isinstance(payload["data"]["seed"], int) and payload["data"]["result_urls"]
    assert payload["timestamp"].endswith("+00:00")


def test_failures_are_retried_with_one_webhook_id_and_logged(
    http: httpx.Client, secret: str, receiver: Receiver
) -> None:
    receiver.answer(Answer(500), Answer(500))
    job_id = submit(http, SMALL, receiver.url)
    delivery = wait_delivered(http, job_id)
    seen = receiver.of_job(job_id)
    assert len(seen) == 3 and {r.webhook_id for r in seen} == {delivery["id"]}
    for r in seen:
        r.verified(secret)
    assert delivery["state"] == "delivered"
    assert [a["status_code"] for a in delivery["attempts"]] == [500, 500, 200]
    assert delivery["attempts"][0]["error"] == "HTTP 500"

    # Redeliver: once more, now, with the same id.
    again = http.post(f"/api/{job_id}/webhooks/{delivery['id']}/redeliver")
    assert again.status_code == 202, again.text
    wait_for(lambda: len(receiver.of_job(job_id)) == 4, timeout_s=10, what="the redelivery")
    assert receiver.of_job(job_id)[-1].webhook_id == delivery["id"]
    wait_for(
        lambda: len(log_of(http, job_id)[-1]["attempts"]) == 4, timeout_s=10, what="its record"
    )


def test_a_receiver_down_for_20_s_still_gets_the_end(http: httpx.Client, secret: str) -> None:
    receiver = Receiver()  # not listening yet: connections are refused
    job_id = submit(http, SMALL, receiver.url)
    time.sleep(20)
    (delivery,) = log_of(http, job_id)
    assert delivery["state"] == "pending" and len(delivery["attempts"]) >= 4
    assert all(a["status_code"] is None for a in delivery["attempts"])
    receiver.start()
    try:
        delivery = wait_delivered(http, job_id, timeout_s=30)
        assert delivery["state"] == "delivered"
        (got,) = receiver.of_job(job_id)
        assert got.verified(secret)["type"] == "job.completed"
    finally:
        receiver.stop()


def test_410_stops_delivery_to_that_url(http: httpx.Client, receiver: Receiver) -> None:
    receiver.answer(Answer(410))
    first = submit(http, SMALL, receiver.url)
    delivery = wait_delivered(http, first)
    assert delivery["state"] == "failed" and len(delivery["attempts"]) == 1
    second = submit(http, SMALL, receiver.url)
    later = wait_delivered(http, second)
    assert later["state"] == "failed" and "410" in later["attempts"][0]["error"]
    assert len(receiver.received) == 1  # nothing after the 410


def test_a_redirect_is_not_followed(http: httpx.Client, receiver: Receiver) -> None:
    elsewhere = Receiver().start()
    try:
        moved = Answer(302, headers={"Location": elsewhere.url})
        receiver.answer(moved, moved)
        job_id = submit(http, SMALL, receiver.url)
        delivery = wait_delivered(http, job_id)
        assert [a["status_code"] for a in delivery["attempts"]] == [302, 302, 200]
        assert "not followed" in delivery["attempts"][0]["error"]
        assert elsewhere.received == []
    finally:
        elsewhere.stop()


def test_a_notifier_killed_mid_send_delivers_again_with_the_same_id(
    stack: Stack, http: httpx.Client, secret: str, receiver: Receiver
) -> None:
    receiver.answer(Answer(200, delay_s=2.0))  # the notifier dies while this one waits
    job_id = submit(http, SMALL, receiver.url)
    wait_for(lambda: receiver.of_job(job_id), timeout_s=60, what="the first attempt")
    stack.stop("notifier", signal.SIGKILL)
    stack.start("notifier")
    # Its lease runs out (the timeout, 3 s, plus 5) and a notifier sends it again.
    wait_for(lambda: len(receiver.of_job(job_id)) == 2, timeout_s=30, what="the second send")
    first, second = receiver.of_job(job_id)
    assert first.webhook_id == second.webhook_id
    assert second.verified(secret)["type"] == "job.completed"
    delivery = wait_delivered(http, job_id)
    assert delivery["state"] == "delivered"


def test_pending_retries_survive_a_redis_restart(
    own_redis: RedisServer, http: httpx.Client, secret: str, receiver: Receiver
) -> None:
    receiver.answer(*[Answer(503)] * 5)  # attempts at about 0, 0.5, 1, 2 and 4 s
    job_id = submit(http, SMALL, receiver.url)
    wait_for(lambda: len(receiver.of_job(job_id)) >= 2, timeout_s=60, what="two attempts")
    time.sleep(1.5)  # appendfsync everysec: what is a second old is on disk
    own_redis.stop(kill=True)
    own_redis.start()
    delivery = wait_delivered(http, job_id, timeout_s=60)
    assert delivery["state"] == "delivered"
    assert receiver.of_job(job_id)[-1].verified(secret)["type"] == "job.completed"


def test_a_rotated_secret_signs_beside_the_old_one(
    stack: Stack, http: httpx.Client, secret: str, receiver: Receiver
) -> None:
    rotated = webhook_secret(stack, "--rotate")
    assert rotated != secret and rotated.startswith("whsec_")
    job_id = submit(http, SMALL, receiver.url)
    wait_delivered(http, job_id)
    (got,) = receiver.of_job(job_id)
    assert len(got.headers["webhook-signature"].split(" ")) == 2
    # A receiver that has switched verifies, and so does one that has not yet.
    assert got.verified(rotated)["data"]["session_id"] == job_id
    assert got.verified(secret)["data"]["session_id"] == job_id


def test_jobs_made_with_auth_off_are_signed_with_the_local_secret(
    stack: Stack, own_redis: RedisServer, http: httpx.Client, receiver: Receiver
) -> None:
    async def make_and_cancel() -> str:
        redis = Redis.from_url(own_redis.url, decode_responses=True)
        try:
            jobs = JobStore(redis, Keys(stack.prefix), task_ttl_s=60)
            spec = JobSpec(
                job_id=str(uuid.uuid4()),
                model="nowhere",  # no worker reads it: the cancel is its only change
                task=Task.T2I,
                params=RenderParams(
                    prompt="p", width=64, height=64, num_inference_steps=2, guidance_scale=1, seed=1
                ),
                created_at=utcnow(),
                tenant=LOCAL_TENANT,
            )
            await jobs.submit(
                spec, message="queued", webhook=Webhook(url=receiver.url, events=["completed"])
            )
            await jobs.emit(spec.job_id, status=JobStatus.CANCELED, message="canceled")
            return spec.job_id
        finally:
            await redis.aclose()

    job_id = asyncio.run(make_and_cancel())
    wait_for(lambda: receiver.of_job(job_id), timeout_s=30, what="the local job's webhook")
    payload = receiver.of_job(job_id)[0].verified(LOCAL_SECRET)
    assert payload["type"] == "job.canceled" and payload["data"]["status"] == "canceled"


def test_another_tenant_sees_no_delivery_log(
    stack: Stack, http: httpx.Client, receiver: Receiver
) -> None:
    job_id = submit(http, SMALL, receiver.url)
    delivery = wait_delivered(http, job_id)
    other = create_key(stack, f"other-{uuid.uuid4().hex[:8]}")
    with httpx.Client(base_url=stack.base_url, timeout=30) as client:
        headers = {"Authorization": f"Bearer {other}"}
        assert client.get(f"/v1/jobs/{job_id}/webhooks", headers=headers).status_code == 404
        path = f"/v1/jobs/{job_id}/webhooks/{delivery['id']}/redeliver"
        assert client.post(path, headers=headers).status_code == 404
    assert len(receiver.of_job(job_id)) == 1
