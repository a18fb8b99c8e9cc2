"""Redis refusing work (error replies, not lost connections) wedges nothing: a full Redis for a few
seconds, a failover that leaves the services on a read-only replica and back, and a crash of
Redis with ``appendfsync everysec``. Through all of it no process exits, readiness goes red and
green again, every job ends, and every job submitted after recovery completes."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from common.redis_server import RedisServer, free_port
from tests.conftest import _stack, redis_of_its_own
from tests.support.client import wait_terminal
from tests.support.ledger import Ledger
from tests.support.stack import Stack
from tests.support.waiting import wait_for

# Long enough to be mid-render when the fault starts, short enough for CI: one batch of these
# takes a few seconds on two CPU cores. The fault lasts until a hand-off has been refused.
LONG = {"prompt": "mid-render", "width": 64, "height": 64, "num_inference_steps": 100}
SMALL = {"prompt": "after", "width": 64, "height": 64, "num_inference_steps": 2}
FAULT_S = 4.0


@pytest.fixture(scope="module")
def primary(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with redis_of_its_own(tmp_path_factory, "replies-redis", appendonly=True) as server:
        yield server


@pytest.fixture(scope="module")
def probe_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def stack(
    primary: RedisServer,
    models_file: Path,
    probe_port: int,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    stack = _stack(
        "replies",
        ("uploader", "gateway"),
        primary,
        models_file,
        tmp_path_factory,
        extra={"DARKROOM_CLAIM_IDLE_MS": "2000"},
    )
    # One route: the worker is ready in seconds instead of warming every family.
    stack.start("worker", env={"DARKROOM_HEALTH_PORT": str(probe_port), "DARKROOM_ROUTES": "sd"})
    yield stack
    stack.stop_all()


@pytest.fixture
def client(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.base_url, timeout=30) as http:
        yield http


def submit(client: httpx.Client, body: dict[str, object]) -> str:
    return str(client.post("/api/sd/t2i", json=body).raise_for_status().json()["session_id"])


def worker_ready(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def rendering(client: httpx.Client, jobs: list[str]) -> bool:
    return any("step" in client.get(f"/api/{j}/status").json()["message"] for j in jobs)


def assert_refused_for_now(client: httpx.Client) -> None:
    refused = client.post("/api/sd/t2i", json=SMALL)
    assert refused.status_code == 503, refused.text
    assert int(refused.headers["Retry-After"]) > 0
    assert refused.json()["error"] == "unavailable"


def hold_until_a_hand_off_is_refused(stack: Stack, refused_before: int, until: float) -> None:
    """The fault lasts ``FAULT_S`` and at least until the worker's finish stage has met it."""
    wait_for(
        lambda: stack.log("worker").count('"job.hand_off_retry"') > refused_before,
        timeout_s=120,
        what="the worker to finish a render while Redis refuses writes",
    )
    wait_for(lambda: time.monotonic() > until, timeout_s=FAULT_S + 1, what="the fault's end")


def finish(
    client: httpx.Client, stack: Stack, probe_port: int, before: list[str], ledger: Ledger
) -> None:
    """After the fault: ready again by itself, every job ends, new jobs complete."""
    wait_for(lambda: worker_ready(probe_port), timeout_s=30, what="the worker ready again")
    after = [submit(client, SMALL) for _ in range(2)]
    finished = [wait_terminal(client, f"/api/{j}/status", timeout_s=120) for j in before + after]
    stored = [
        len(list((stack.workdir / "output" / "generations").glob(f"*{j}*"))) for j in before + after
    ]
    ledger.outcome([f["status"] for f in finished], stored)
    stack._check_alive()  # no process exited
    assert [f["status"] for f in finished] == ["completed"] * len(finished)
    assert stored == [1] * len(finished)


def test_a_full_redis_for_a_few_seconds_wedges_nothing(
    stack: Stack, primary: RedisServer, probe_port: int, client: httpx.Client, ledger: Ledger
) -> None:
    wait_for(lambda: worker_ready(probe_port), timeout_s=30, what="the worker ready")
    admin = redis.Redis.from_url(primary.url)
    before = [submit(client, LONG) for _ in range(4)]
    wait_for(lambda: rendering(client, before), timeout_s=60, what="a render to start")
    refused = stack.log("worker").count('"job.hand_off_retry"')
    admin.config_set("maxmemory", 1)
    ledger.fault("redis OOM mid-render")
    try:
        full_until = time.monotonic() + FAULT_S
        assert_refused_for_now(client)
        wait_for(lambda: not worker_ready(probe_port), timeout_s=10, what="the worker not ready")
        hold_until_a_hand_off_is_refused(stack, refused, full_until)
    finally:
        admin.config_set("maxmemory", 0)
        admin.close()
    finish(client, stack, probe_port, before, ledger)


def test_a_failover_to_a_replica_and_back_wedges_nothing(
    stack: Stack,
    primary: RedisServer,
    probe_port: int,
    client: httpx.Client,
    ledger: Ledger,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    standby = RedisServer(tmp_path_factory.mktemp("standby-redis"))
    standby.start()
    old = redis.Redis.from_url(primary.url)
    new = redis.Redis.from_url(standby.url)
    try:
        new.replicaof("127.0.0.1", primary.port)
        wait_for(lambda: _linked(new), timeout_s=30, what="the standby in sync")
        wait_for(lambda: worker_ready(probe_port), timeout_s=30, what="the worker ready")
        before = [submit(client, LONG) for _ in range(4)]
        wait_for(lambda: rendering(client, before), timeout_s=60, what="a render to start")
        # A planned failover (Redis's FAILOVER, as a managed service's maintenance does it): the
        # primary pauses writes until the standby has every one, then they swap roles. The
        # services still talk to the old primary, now its read-only replica, as they would until
        # a Sentinel or DNS points them over. (An unplanned one may lose the writes the replica
        # had not received yet: Redis replicates asynchronously.)
        refused = stack.log("worker").count('"job.hand_off_retry"')
        old.execute_command("FAILOVER", "TO", "127.0.0.1", standby.port, "TIMEOUT", 10_000)
        ledger.fault("redis primary demoted to a read-only replica mid-render")
        demoted_until = time.monotonic() + FAULT_S
        wait_for(lambda: _linked(old), timeout_s=30, what="the old primary following")
        assert new.info("replication")["role"] == "master"
        assert_refused_for_now(client)
        wait_for(lambda: not worker_ready(probe_port), timeout_s=10, what="the worker not ready")
        hold_until_a_hand_off_is_refused(stack, refused, demoted_until)
        old.replicaof("NO", "ONE")  # and back: the old primary leads again, with every write
    finally:
        old.close()
        new.close()
        standby.stop(kill=True)
    finish(client, stack, probe_port, before, ledger)


def test_a_redis_crash_loses_at_most_the_last_second(
    stack: Stack, primary: RedisServer, probe_port: int, client: httpx.Client, ledger: Ledger
) -> None:
    """SIGKILL with ``appendfsync everysec``: what was acknowledged more than a second before
    the crash is on disk, and everything on disk completes."""
    before = [submit(client, LONG) for _ in range(4)]
    wait_for(lambda: rendering(client, before), timeout_s=60, what="a render to start")
    time.sleep(1.5)  # the promise covers writes older than the last fsync, one second apart
    primary.stop(kill=True)
    ledger.fault("redis SIGKILL (AOF everysec) mid-render")
    primary.start()
    wait_for(lambda: client.get("/").status_code == 200, timeout_s=30, what="the gateway health")
    finish(client, stack, probe_port, before, ledger)


def _linked(client: redis.Redis) -> bool:
    info = client.info("replication")
    return info.get("role") == "slave" and info.get("master_link_status") == "up"
