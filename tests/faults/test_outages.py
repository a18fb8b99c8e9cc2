"""Redis restarting and S3 going away lose nothing: every loop reconnects and carries on."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from common.redis_server import RedisServer
from tests.conftest import _stack, redis_of_its_own
from tests.support.client import wait_terminal
from tests.support.ledger import Ledger
from tests.support.s3_server import S3Server
from tests.support.stack import Stack
from tests.support.waiting import wait_for

SMALL = {"prompt": "outage", "width": 64, "height": 64, "num_inference_steps": 2}


@pytest.fixture(scope="module")
def aof_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with redis_of_its_own(tmp_path_factory, "aof-redis", appendonly=True) as server:
        yield server


@pytest.fixture(scope="module")
def stack(
    aof_redis: RedisServer, models_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    stack = _stack(
        "outage",
        ("worker", "uploader", "gateway"),
        aof_redis,
        models_file,
        tmp_path_factory,
        extra={"DARKROOM_CLAIM_IDLE_MS": "2000"},
    )
    yield stack
    stack.stop_all()


def submit(client: httpx.Client) -> str:
    return str(client.post("/api/sd/t2i", json=SMALL).raise_for_status().json()["session_id"])


def test_a_redis_restart_loses_no_submitted_job(
    stack: Stack, aof_redis: RedisServer, ledger: Ledger
) -> None:
    with httpx.Client(base_url=stack.base_url, timeout=30) as client:
        before = [submit(client) for _ in range(5)]
        aof_redis.stop()  # a clean restart: the AOF holds every acknowledged write
        ledger.fault("redis restart (AOF)")
        down = client.post("/api/sd/t2i", json=SMALL)
        assert down.status_code == 503 and down.headers["Retry-After"]
        assert down.json()["error"] == "unavailable"
        aof_redis.start()
        wait_for(lambda: client.get("/").status_code == 200, timeout_s=30, what="health")
        after = [submit(client) for _ in range(3)]
        finished = [
            wait_terminal(client, f"/api/{j}/status", timeout_s=120) for j in before + after
        ]
    stored = [
        len(list((stack.workdir / "output" / "generations").glob(f"*{j}*"))) for j in before + after
    ]
    ledger.outcome([f["status"] for f in finished], stored)
    assert [f["status"] for f in finished] == ["completed"] * 8
    assert stored == [1] * 8


def test_an_s3_outage_delays_uploads_but_loses_none(
    s3_stack: Stack, s3_server: S3Server, ledger: Ledger
) -> None:
    with httpx.Client(base_url=s3_stack.base_url, timeout=30) as client:
        with s3_server.down():
            ledger.fault("S3 outage")
            jobs = [submit(client) for _ in range(3)]

            def waiting_on_storage() -> bool:
                return all(
                    "uploading" in client.get(f"/api/{j}/status").json()["message"] for j in jobs
                )

            wait_for(waiting_on_storage, timeout_s=120, what="renders waiting on storage")
        finished = [wait_terminal(client, f"/api/{j}/status", timeout_s=180) for j in jobs]
    keys = [o["Key"] for o in s3_server.client().list_objects_v2(Bucket="darkroom-e2e")["Contents"]]
    stored = [sum(job in key for key in keys) for job in jobs]
    ledger.outcome([f["status"] for f in finished], stored)
    assert [f["status"] for f in finished] == ["completed"] * 3
    assert stored == [1] * 3


def test_an_uploader_killed_mid_upload_is_replaced_and_nothing_is_lost(
    s3_stack: Stack, s3_server: S3Server, ledger: Ledger
) -> None:
    with httpx.Client(base_url=s3_stack.base_url, timeout=30) as client:
        with s3_server.down():  # holds every upload in its retry loop
            jobs = [submit(client) for _ in range(2)]

            def waiting_on_storage() -> bool:
                return all(
                    "uploading" in client.get(f"/api/{j}/status").json()["message"] for j in jobs
                )

            wait_for(waiting_on_storage, timeout_s=120, what="renders waiting on storage")
            s3_stack.stop("uploader", signal.SIGKILL)
            ledger.fault("uploader SIGKILL mid-upload")
            s3_stack.start("uploader", wait=False)  # it waits for storage to come back
        finished = [wait_terminal(client, f"/api/{j}/status", timeout_s=180) for j in jobs]
    keys = [o["Key"] for o in s3_server.client().list_objects_v2(Bucket="darkroom-e2e")["Contents"]]
    stored = [sum(job in key for key in keys) for job in jobs]
    ledger.outcome([f["status"] for f in finished], stored)
    assert [f["status"] for f in finished] == ["completed"] * 2
    assert stored == [1] * 2
