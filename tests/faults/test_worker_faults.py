"""Workers dying or being stopped mid-render lose nothing and duplicate nothing."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from pytest import TempPathFactory

from common.redis_server import RedisServer
from tests.conftest import _stack
from tests.support.client import wait_terminal
from tests.support.ledger import Ledger
from tests.support.stack import Stack
from tests.support.waiting import wait_for

# A render of several seconds on the tiny checkpoint: long enough to be caught in the middle.
LONG = {"prompt": "a long render", "width": 1536, "height": 1536, "num_inference_steps": 60}
CLAIM_IDLE_MS = 3000


@pytest.fixture(scope="module")
def stack(
    redis_server: RedisServer, models_file: Path, tmp_path_factory: TempPathFactory
) -> Iterator[Stack]:
    """Two workers in one group, taking over a silent member's job after 3 s."""
    stack = _stack(
        "faults",
        ("worker:a", "worker:b", "uploader", "gateway"),
        redis_server,
        models_file,
        tmp_path_factory,
        extra={
            "DARKROOM_CLAIM_IDLE_MS": str(CLAIM_IDLE_MS),
            "DARKROOM_ROUTES": "sd",
            # A SIGTERMed worker finishes the render in hand however slow the machine is.
            "DARKROOM_DRAIN_GRACE_S": "600",
        },
    )
    yield stack
    stack.stop_all()


def holder(stack: Stack, job_stream: str) -> str | None:
    """The running worker whose consumer holds the job's entry, if one does."""
    r = redis.Redis.from_url(stack.env["REDIS_URL"], decode_responses=True)
    try:
        pending = r.xpending_range(job_stream, "workers", min="-", max="+", count=1)
    finally:
        r.close()
    if not pending:
        return None
    pid = int(pending[0]["consumer"].rsplit("-", 1)[1])
    return next((name for name, p in stack.processes.items() if p.pid == pid), None)


def results(stack: Stack, job_id: str) -> list[Path]:
    return list((stack.workdir / "output" / "generations").glob(f"*{job_id}*"))


def rendering(client: httpx.Client, job_id: str) -> bool:
    return "step" in client.get(f"/api/{job_id}/status").json()["message"]


def test_killed_workers_jobs_are_taken_over_and_complete_once(stack: Stack, ledger: Ledger) -> None:
    """SIGKILL the worker holding the job, twice in a row: each time the other one takes over."""
    r = redis.Redis.from_url(stack.env["REDIS_URL"], decode_responses=True)
    with httpx.Client(base_url=stack.base_url, timeout=30) as client:
        job_id = client.post("/api/sd/t2i", json=LONG).raise_for_status().json()["session_id"]
        for attempt in (1, 2):

            def rendering_attempt(n: int = attempt) -> bool:
                attempts = r.hget(f"{stack.prefix}job:{job_id}", "attempts")
                return attempts == str(n) and rendering(client, job_id)

            wait_for(rendering_attempt, timeout_s=120, what=f"attempt {attempt} to render")
            victim = holder(stack, f"{stack.prefix}jobs:sd")
            assert victim is not None
            stack.stop(victim, signal.SIGKILL)
            ledger.fault("worker SIGKILL mid-render")
            # Back to two workers, but not waited for: on a slow machine the takeover's render
            # may be over before a restarted worker is ready.
            stack.start(victim, wait=False)
        status = wait_terminal(client, f"/api/{job_id}/status", timeout_s=180)
    ledger.outcome([status["status"]], [len(results(stack, job_id))])
    assert status["status"] == "completed", status
    assert len(results(stack, job_id)) == 1
    assert r.hget(f"{stack.prefix}job:{job_id}", "attempts") == "3"
    r.close()


def test_sigterm_finishes_the_job_in_hand_then_exits_cleanly(stack: Stack, ledger: Ledger) -> None:
    with httpx.Client(base_url=stack.base_url, timeout=30) as client:
        job_id = client.post("/api/sd/t2i", json=LONG).raise_for_status().json()["session_id"]
        wait_for(lambda: rendering(client, job_id), timeout_s=120, what="the render to start")
        victim = holder(stack, f"{stack.prefix}jobs:sd")
        assert victim is not None
        assert stack.stop(victim, signal.SIGTERM, timeout_s=120) == 0
        ledger.fault("worker SIGTERM mid-render")
        status = wait_terminal(client, f"/api/{job_id}/status", timeout_s=120)
    ledger.outcome([status["status"]], [len(results(stack, job_id))])
    assert status["status"] == "completed"
    assert len(results(stack, job_id)) == 1
    r = redis.Redis.from_url(stack.env["REDIS_URL"], decode_responses=True)
    assert r.hget(f"{stack.prefix}job:{job_id}", "attempts") == "1"  # never handed over
    r.close()


def test_sigterm_past_the_drain_grace_gives_the_job_to_another_worker(
    stack: Stack, ledger: Ledger
) -> None:
    """A render that outlasts the drain grace stops; its job goes back to the group at once,
    without spending one of its attempts, and another worker renders it."""
    for service in [s for s in stack.processes if s.startswith("worker")]:
        stack.stop(service)
    # Its render lasts a minute at least (a test aid), however fast the machine: still going
    # when worker:a is ready, however slow the machine.
    stack.start("worker:c", env={"DARKROOM_DRAIN_GRACE_S": "1", "DARKROOM_TEST_STEP_DELAY_S": "1"})
    r = redis.Redis.from_url(stack.env["REDIS_URL"], decode_responses=True)
    with httpx.Client(base_url=stack.base_url, timeout=30) as client:
        job_id = client.post("/api/sd/t2i", json=LONG).raise_for_status().json()["session_id"]
        wait_for(lambda: rendering(client, job_id), timeout_s=120, what="the render to start")
        stack.start("worker:a")
        assert holder(stack, f"{stack.prefix}jobs:sd") == "worker:c"
        assert stack.stop("worker:c", signal.SIGTERM, timeout_s=30) == 0
        ledger.fault("worker SIGTERM past the drain grace")
        assert '"job.released"' in stack.log("worker:c")
        wait_for(
            lambda: holder(stack, f"{stack.prefix}jobs:sd") == "worker:a",
            timeout_s=CLAIM_IDLE_MS / 1000,  # sooner than a silent worker's job is taken over
            what="worker:a to take the released job",
        )
        status = wait_terminal(client, f"/api/{job_id}/status", timeout_s=300)
    ledger.outcome([status["status"]], [len(results(stack, job_id))])
    assert status["status"] == "completed", status
    assert len(results(stack, job_id)) == 1
    assert r.hget(f"{stack.prefix}job:{job_id}", "attempts") == "1"
    r.close()


def test_a_job_that_kills_every_worker_goes_to_the_dead_stream(
    stack: Stack, ledger: Ledger
) -> None:
    """A poison job: each worker that takes it dies. After the route's attempts it is failed with
    a readable error and parked in the dead stream; it never loops, and the workers go on."""
    r = redis.Redis.from_url(stack.env["REDIS_URL"], decode_responses=True)
    stream = f"{stack.prefix}jobs:sd"
    if not any(s.startswith("worker") for s in stack.processes):
        stack.start("worker:a")
    dead_before = r.xlen(f"{stack.prefix}dead")
    with httpx.Client(base_url=stack.base_url, timeout=30) as client:
        job_id = client.post("/api/sd/t2i", json=LONG).raise_for_status().json()["session_id"]
        for attempt in (1, 2, 3):

            def rendering_attempt(n: int = attempt) -> bool:
                attempts = r.hget(f"{stack.prefix}job:{job_id}", "attempts")
                return attempts == str(n) and rendering(client, job_id)

            wait_for(rendering_attempt, timeout_s=120, what=f"attempt {attempt} to render")
            victim = holder(stack, stream)
            assert victim is not None
            stack.stop(victim, signal.SIGKILL)
            ledger.fault("worker SIGKILL by a poison job")
            stack.start(victim, wait=False)
        status = wait_terminal(client, f"/api/{job_id}/status", timeout_s=120)
        assert status["status"] == "failed"
        assert "Gave up after 3 attempts" in status["error"]

        # The workers are fine: the next job renders.
        small = {"prompt": "after the poison", "width": 64, "height": 64}
        after = client.post("/api/sd/t2i", json=small).raise_for_status().json()["session_id"]
        after_status = wait_terminal(client, f"/api/{after}/status", timeout_s=120)["status"]
    ledger.submitted += 1
    ledger.failed_as_intended += status["status"] == "failed"
    ledger.duplicated += len(results(stack, job_id)) > 0
    ledger.outcome([after_status], [len(results(stack, after))])
    assert after_status == "completed"
    assert r.xlen(f"{stack.prefix}dead") == dead_before + 1
    ((_, entry),) = r.xrange(f"{stack.prefix}dead", count=1, min="-", max="+")[-1:]
    assert entry["stream"] == stream and entry["attempts"] == "3"
    assert len(results(stack, job_id)) == 0
    r.close()
