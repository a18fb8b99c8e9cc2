"""Scheduling through HTTP on a real Redis with real workers: priority classes, aging, fair share
between tenants (keys), ``--max-priority``, and cancel, deadlines and takeover of jobs in the
scheduler's structures. Judged by the order jobs complete in, never by time."""

from __future__ import annotations

import signal
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from common.keys import Keys
from common.redis_server import RedisServer
from tests.conftest import _stack
from tests.support.fleet import job_records, kill_while_holding, stored_results, wait_all_terminal
from tests.support.keys import create_key
from tests.support.stack import Stack
from tests.support.waiting import wait_for

BODY = {"prompt": "p", "width": 64, "height": 64, "num_inference_steps": 2, "cache": False}
# The second worker's aging limit (DARKROOM_PRIORITY_AGING_S): short, so a test sees a low job
# promoted; the first worker and the gateway keep the default, which fair share relies on.
AGING_S = 4.0


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


@pytest.fixture(scope="module")
def second_worker(stack: Stack) -> str:
    """A second worker in the group: short aging, and it takes over a silent member's jobs
    after 3 s (both are the claimer's and the refiller's own settings)."""
    if "worker:b" not in stack.processes:
        stack.start(
            "worker:b",
            env={"DARKROOM_PRIORITY_AGING_S": str(AGING_S), "DARKROOM_CLAIM_IDLE_MS": "3000"},
        )
    return "worker:b"


def workers(stack: Stack) -> list[str]:
    return [name for name in stack.processes if name.startswith("worker")]


@contextmanager
def frozen(stack: Stack) -> Iterator[None]:
    """Every worker stopped (SIGSTOP) in the block: what is submitted meanwhile stays queued."""
    processes = [stack.processes[name] for name in workers(stack)]
    for process in processes:
        process.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        for process in processes:
            process.send_signal(signal.SIGCONT)


def traces(r: redis.Redis, keys: Keys, job_id: str) -> list[str]:
    """The queueing structures that still name the job: the scheduler's waiting lists and
    sorted sets, the ready stream, the backlog, the deadlines."""
    found = []
    for key in r.scan_iter(match=f"{keys.scheduler_prefix}*", count=1000):
        kind = r.type(key)
        if kind == "list" and job_id in r.lrange(key, 0, -1):
            found.append(key)
        elif kind == "zset" and r.zscore(key, job_id) is not None:
            found.append(key)
    for stream in (keys.job_stream("sd"), keys.backlog("sd")):
        entries: list[tuple[str, dict[str, str]]] = r.xrange(stream)  # type: ignore[assignment]
        if any(job_id in str(fields) for _, fields in entries):
            found.append(stream)
    if r.zscore(keys.deadlines, job_id) is not None:
        found.append(keys.deadlines)
    return found


def test_cancel_and_a_deadline_take_a_waiting_job_out_of_every_queue(
    stack: Stack, r: redis.Redis
) -> None:
    keys = Keys(stack.prefix)
    with client(stack, create_key(stack, "canceler", options=("--max-priority", "high"))) as http:
        with frozen(stack):
            ahead = submit(http, 2, start_seed=700)  # normal: the lows wait behind them
            (canceled,) = submit(http, 1, start_seed=710, priority="low")
            response = http.post(
                "/api/sd/t2i",
                json={**BODY, "seed": 711, "priority": "low"},
                headers={"Cancel-After": "2"},
            )
            assert response.status_code == 200, response.text
            expired = str(response.json()["session_id"])
            queued = job_records(r, keys, [canceled, expired])
            assert all(rec is not None and rec.queue for rec in queued.values()), queued
            assert traces(r, keys, canceled) and traces(r, keys, expired)

            assert http.delete(f"/api/{canceled}").status_code == 200
            assert http.get(f"/api/{canceled}/status").json()["status"] == "canceled"

            def failed() -> dict[str, Any] | None:
                body: dict[str, Any] = http.get(f"/api/{expired}/status").json()
                return body if body["status"] == "failed" else None

            body = wait_for(failed, timeout_s=60, what="the deadline to pass")
            assert body is not None and body["error"] == "deadline exceeded", body
            assert traces(r, keys, canceled) == [] and traces(r, keys, expired) == []
        completion_order(stack, r, ahead)
    # Neither ever rendered, nor came back when the workers went on.
    assert stored_results(stack.workdir / "output")[canceled] == 0
    assert stored_results(stack.workdir / "output")[expired] == 0
    ended = job_records(r, keys, [canceled, expired])
    assert [rec.status.value for rec in ended.values() if rec] == ["canceled", "failed"]


def test_a_killed_workers_jobs_of_several_tenants_and_classes_complete_once(
    stack: Stack, r: redis.Redis, second_worker: str
) -> None:
    keys = Keys(stack.prefix)
    tenants = [
        client(stack, create_key(stack, f"killed-{n}", options=("--max-priority", "high")))
        for n in range(3)
    ]
    jobs: dict[str, tuple[int, str]] = {}  # job id: tenant, class
    victim = next(name for name in workers(stack) if name != second_worker)
    with frozen(stack):
        for n, http in enumerate(tenants):
            for priority, count in (("high", 1), ("normal", 2), ("low", 3)):
                for job_id in submit(http, count, start_seed=800 + 10 * n, priority=priority):
                    jobs[job_id] = (n, priority)
        # The victim goes on first and takes a batch; the survivor only once it is dead.
        stack.processes[victim].send_signal(signal.SIGCONT)

        def several(held: list[str]) -> bool:
            kinds = [jobs[job_id] for job_id in held if job_id in jobs]
            return len({t for t, _ in kinds}) >= 2 and len({c for _, c in kinds}) >= 2

        held = kill_while_holding(
            stack, victim, r, keys.job_stream("sd"), "workers", timeout_s=120, enough=several
        )
    for http in tenants:
        http.close()
    records = wait_all_terminal(stack, r, list(jobs), timeout_s=300)
    assert {rec.status.value for rec in records.values() if rec} == {"completed"}
    assert len(records) == len(jobs)
    stored = stored_results(stack.workdir / "output")
    assert Counter(stored[job_id] for job_id in jobs) == Counter({1: len(jobs)}), stored
    assert all(rec and rec.attempts >= 2 for job_id, rec in records.items() if job_id in held)


def test_an_old_low_job_is_promoted_past_normal_jobs_queued_after_it(
    stack: Stack, r: redis.Redis, second_worker: str
) -> None:
    """A low job that waited past the aging limit goes before the normal jobs queued after it;
    without aging it would go after all of them."""
    for name in workers(stack):
        if name != second_worker:
            stack.stop(name)  # only the short-aging worker picks
    keys = Keys(stack.prefix)
    with client(stack, create_key(stack, "aging", options=("--max-priority", "high"))) as http:
        with frozen(stack):
            before = submit(http, 2, start_seed=900)  # whatever a blocked read takes
            (old,) = submit(http, 1, start_seed=910, priority="low")
            queued_at = time.time()
            wait_for(
                lambda: time.time() - queued_at > AGING_S + 1,
                timeout_s=AGING_S + 30,
                what="the low job to age",
            )
            after = submit(http, 24, start_seed=920)
            assert job_records(r, keys, [old])[old].status.value == "pending"  # type: ignore[union-attr]
        order = completion_order(stack, r, [*before, old, *after])
    overtaken = [job for job in after if order.index(job) > order.index(old)]
    # Ahead of it at most the normal jobs of its own batch (sd batches up to 8).
    assert len(overtaken) >= len(after) - 8, (len(overtaken), order.index(old))
