"""Jobs that wait for a worker that never comes (a route scaled to zero): a deadline still ends
them, and canceled ones leave Redis as it was. The stack is a gateway alone on its own Redis, so
nothing drains the queues and Redis's memory is this test's alone."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from common.keys import Keys
from common.redis_server import RedisServer
from common.schemas import WorkerHeartbeat
from tests.conftest import _stack, redis_of_its_own
from tests.support.client import noise_png, read_feed, wait_terminal
from tests.support.ledger import Ledger
from tests.support.stack import Stack

T2I = {"prompt": "nobody renders this", "width": 64, "height": 64, "num_inference_steps": 2}
INPUT_BYTES = 1024 * 1024
# Records and event logs of finished jobs stay for TASK_TTL: a few hundred KB for 50 jobs, more
# on some machines (allocator, client buffers). Below one input: not even one may stay behind.
MEMORY_SLACK_BYTES = INPUT_BYTES * 3 // 4


@pytest.fixture(scope="module")
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with redis_of_its_own(tmp_path_factory, "waiting-redis") as server:
        yield server


@pytest.fixture(scope="module")
def gateway_alone(
    own_redis: RedisServer, models_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    stack = _stack("waiting", ("gateway",), own_redis, models_file, tmp_path_factory)
    yield stack
    stack.stop_all()


@pytest.fixture(scope="module")
def client(gateway_alone: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway_alone.base_url, timeout=30) as http:
        yield http


def queued(client: httpx.Client, model: str) -> int:
    listing = client.get("/api/models").raise_for_status().json()
    depth: int = next(m["queued"] for m in listing if m["name"] == model)
    return depth


def test_a_queued_job_nobody_serves_fails_at_its_deadline(
    client: httpx.Client, ledger: Ledger
) -> None:
    assert client.get("/api/models").json()[0]["served"] is False  # no worker anywhere
    response = client.post("/api/flux/t2i", json=T2I, headers={"Cancel-After": "1"})
    job_id = response.raise_for_status().json()["session_id"]
    submitted = time.monotonic()
    assert queued(client, "flux") == 1
    events = read_feed(client, f"/api/{job_id}/events", last_event_id=0, timeout_s=30)
    waited_s = time.monotonic() - submitted
    ledger.fault("deadline passes while queued on a route no worker serves")
    ledger.submitted += 1
    final = events[-1].data
    ledger.failed_as_intended += final["error"] == "deadline exceeded"
    assert (final["status"], final["error"]) == ("failed", "deadline exceeded")
    assert waited_s < 10  # about a second past the deadline, not whenever a worker shows up
    assert queued(client, "flux") == 0  # and it left the queue


def test_canceled_queued_inputs_leave_redis_as_it_was(
    client: httpx.Client, own_redis: RedisServer, ledger: Ledger
) -> None:
    admin = redis.Redis.from_url(own_redis.url)

    def submit_i2i(seed: int) -> str:
        files = {"image": ("in.png", noise_png(INPUT_BYTES, seed), "image/png")}
        data = {"prompt": "queued forever", "strength": "0.5", "num_inference_steps": "2"}
        response = client.post("/api/sd/i2i", files=files, data=data)
        return str(response.raise_for_status().json()["session_id"])

    client.delete(f"/api/{submit_i2i(0)}").raise_for_status()  # scripts loaded, streams made
    admin.memory_purge()
    start = int(admin.info("memory")["used_memory"])
    jobs = [submit_i2i(seed) for seed in range(1, 51)]
    loaded = int(admin.info("memory")["used_memory"])
    assert loaded - start > 50 * INPUT_BYTES * 0.9  # the inputs really were in Redis
    for job_id in jobs:
        client.delete(f"/api/{job_id}").raise_for_status()
    finished = [wait_terminal(client, f"/api/{j}/status", timeout_s=10) for j in jobs]
    admin.memory_purge()
    end = int(admin.info("memory")["used_memory"])
    ledger.fault("50 queued 1 MiB inputs canceled")
    ledger.submitted += len(jobs)
    ledger.failed_as_intended += sum(f["status"] == "canceled" for f in finished)
    admin.close()
    assert [f["status"] for f in finished] == ["canceled"] * 50
    assert end - start < MEMORY_SLACK_BYTES, f"{(end - start) / 1024:.0f} KiB left behind"
    assert queued(client, "sd") == 0


def test_the_models_listing_reads_heartbeats_in_one_call(
    client: httpx.Client, own_redis: RedisServer, gateway_alone: Stack
) -> None:
    admin = redis.Redis.from_url(own_redis.url, decode_responses=True)
    keys = Keys(gateway_alone.prefix)
    beat = WorkerHeartbeat(consumer="w-live", device="cpu", routes=["sd"], loaded=["sd"], ts=0)
    admin.hset(
        keys.workers, "w-live", beat.model_copy(update={"ts": time.time()}).model_dump_json()
    )
    admin.hset(
        keys.workers, "w-gone", beat.model_copy(update={"consumer": "w-gone"}).model_dump_json()
    )
    admin.config_resetstat()
    try:
        listing = {m["name"]: m for m in client.get("/api/models").raise_for_status().json()}
        commands = admin.info("commandstats")
    finally:
        admin.hdel(keys.workers, "w-live", "w-gone")
        admin.close()
    assert listing["sd"]["served"] and listing["sd"]["workers_loaded"] == 1  # not the stale one
    assert not listing["flux"]["served"]
    assert "cmdstat_scan" not in commands and "cmdstat_keys" not in commands
