"""Storage that refuses or stalls: a permanent S3 error fails the job at once with a message naming
the bucket, the uploader stays up, and one hanging PUT does not hold up the jobs behind it."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pytest import TempPathFactory

from common.redis_server import RedisServer, free_port
from tests.conftest import _stack
from tests.support.client import wait_terminal
from tests.support.ledger import Ledger
from tests.support.s3_server import (
    READ_ONLY_ACCESS_KEY_ID,
    READ_ONLY_SECRET_ACCESS_KEY,
    S3Server,
)
from tests.support.slow_s3 import SlowS3Proxy
from tests.support.stack import Stack
from tests.support.waiting import wait_for

SMALL = {"prompt": "storage faults", "width": 64, "height": 64, "num_inference_steps": 2}

StartUploader = Callable[..., None]


@pytest.fixture(scope="module")
def stack(
    redis_server: RedisServer, models_file: Path, tmp_path_factory: TempPathFactory
) -> Iterator[Stack]:
    """Gateway and worker; each test starts the uploader with the storage settings it needs."""
    stack = _stack(
        "storage-faults",
        ("worker", "gateway"),
        redis_server,
        models_file,
        tmp_path_factory,
        extra={"DARKROOM_ROUTES": "sd"},
    )
    yield stack
    stack.stop_all()


@pytest.fixture
def bucket(s3_server: S3Server) -> str:
    name = f"darkroom-{uuid.uuid4().hex[:12]}"
    s3_server.client().create_bucket(Bucket=name)
    return name


@pytest.fixture
def start_uploader(stack: Stack, s3_server: S3Server) -> Iterator[StartUploader]:
    """Start (or restart) the uploader on S3 with these settings; stopped after the test."""

    def start(bucket: str, **env: str) -> None:
        if "uploader" in stack.processes:
            stack.stop("uploader")
        settings = s3_server.storage_env(bucket) | {"DARKROOM_S3_CREATE_BUCKET": "false"}
        stack.start("uploader", env=settings | env)

    yield start
    if "uploader" in stack.processes:
        stack.stop("uploader")


def submit(client: httpx.Client) -> str:
    return str(client.post("/api/sd/t2i", json=SMALL).raise_for_status().json()["session_id"])


def stored(s3_server: S3Server, bucket: str, job_id: str) -> int:
    listed = s3_server.client().list_objects_v2(Bucket=bucket)
    return sum(job_id in item["Key"] for item in listed.get("Contents", []))


def uploader_log(stack: Stack) -> list[dict[str, Any]]:
    lines = stack.log("uploader").splitlines()
    return [json.loads(line) for line in lines if line.startswith("{")]


def readyz(port: int) -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5)


def ready(port: int) -> bool:
    try:
        return readyz(port).status_code == 200
    except httpx.TransportError:  # its probe server not listening yet
        return False


def test_access_denied_fails_jobs_at_once_and_readiness_is_red_until_storage_takes_writes(
    stack: Stack,
    s3_server: S3Server,
    bucket: str,
    start_uploader: StartUploader,
    ledger: Ledger,
) -> None:
    port = free_port()
    start_uploader(
        bucket,
        AWS_ACCESS_KEY_ID=READ_ONLY_ACCESS_KEY_ID,
        AWS_SECRET_ACCESS_KEY=READ_ONLY_SECRET_ACCESS_KEY,
        DARKROOM_HEALTH_PORT=str(port),
    )
    uploader = stack.processes["uploader"]
    wait_for(lambda: ready(port), timeout_s=60, what="the uploader ready: nothing refused yet")
    ledger.fault("S3 AccessDenied (credentials without write)")
    with httpx.Client(base_url=stack.base_url, timeout=30) as client:
        denied = submit(client)
        failed = wait_terminal(client, f"/api/{denied}/status")
        assert failed["status"] == "failed"
        assert failed["error"].startswith(
            f"Could not store the result: AccessDenied on bucket '{bucket}'"
        )
        assert "s3:PutObject" in failed["error"]  # what to fix
        ledger.failed_as_intended += 1
        # At once: not one retry of a request that cannot succeed. And the uploader is still up.
        assert not [e for e in uploader_log(stack) if e["event"] == "upload.retry"]
        assert uploader.poll() is None
        assert stored(s3_server, bucket, denied) == 0

        # Red while storage refuses, saying which bucket and what it answered.
        red = readyz(port)
        assert red.status_code == 503
        assert red.json()["storage"] == {"bucket": bucket, "error": "AccessDenied"}
        assert f"AccessDenied on bucket '{bucket}'" in red.json()["reason"]

        # The operator grants the write; the uploader finds out by itself, without a job or a
        # restart, and the next job completes.
        with s3_server.writes_granted(READ_ONLY_ACCESS_KEY_ID):
            wait_for(
                lambda: ready(port),
                timeout_s=60,
                what="the uploader ready again once storage takes writes",
            )
            fixed = submit(client)
            finished = wait_terminal(client, f"/api/{fixed}/status")
            count = stored(s3_server, bucket, fixed)
    ledger.outcome([finished["status"]], [count])
    assert stack.processes["uploader"] is uploader and uploader.poll() is None
    assert finished["status"] == "completed"
    assert count == 1


def test_a_missing_bucket_fails_the_job_at_once_naming_it(
    stack: Stack, s3_server: S3Server, start_uploader: StartUploader, ledger: Ledger
) -> None:
    missing = f"darkroom-missing-{uuid.uuid4().hex[:8]}"
    start_uploader(missing)
    ledger.fault("S3 NoSuchBucket")
    with httpx.Client(base_url=stack.base_url, timeout=30) as client:
        job = submit(client)
        failed = wait_terminal(client, f"/api/{job}/status")
    assert failed["status"] == "failed"
    assert failed["error"].startswith(
        f"Could not store the result: NoSuchBucket on bucket '{missing}'"
    )
    assert "S3_BUCKET_NAME" in failed["error"]
    ledger.failed_as_intended += 1
    assert not [e for e in uploader_log(stack) if e["event"] == "upload.retry"]
    assert stack.processes["uploader"].poll() is None


def test_one_hanging_put_does_not_hold_up_the_jobs_behind_it(
    stack: Stack,
    s3_server: S3Server,
    bucket: str,
    start_uploader: StartUploader,
    ledger: Ledger,
) -> None:
    with SlowS3Proxy(s3_server.endpoint_url) as proxy:
        start_uploader(bucket, S3_ENDPOINT_URL=proxy.endpoint_url)
        stall = proxy.stall("/generations/")  # the next result PUT, whichever job's it is
        with httpx.Client(base_url=stack.base_url, timeout=30) as client:
            slow = submit(client)
            assert slow in stall.wait_held(timeout_s=120)
            ledger.fault("one S3 PUT hanging")
            others = [submit(client) for _ in range(2)]
            finished = [wait_terminal(client, f"/api/{j}/status") for j in others]
            # Both done while the first upload still hangs.
            assert client.get(f"/api/{slow}/status").json()["status"] == "processing"
            stall.release()
            finished.insert(0, wait_terminal(client, f"/api/{slow}/status"))
    jobs = [slow, *others]
    counts = [stored(s3_server, bucket, j) for j in jobs]
    ledger.outcome([f["status"] for f in finished], counts)
    assert [f["status"] for f in finished] == ["completed"] * 3
    assert counts == [1] * 3


def test_a_deadline_that_passes_while_uploading_fails_the_job_and_stores_nothing(
    stack: Stack,
    s3_server: S3Server,
    bucket: str,
    start_uploader: StartUploader,
    ledger: Ledger,
) -> None:
    with SlowS3Proxy(s3_server.endpoint_url) as proxy:
        start_uploader(bucket, S3_ENDPOINT_URL=proxy.endpoint_url)
        stall = proxy.stall("/generations/")
        with httpx.Client(base_url=stack.base_url, timeout=30) as client:
            response = client.post("/api/sd/t2i", json=SMALL, headers={"Cancel-After": "3"})
            job = str(response.raise_for_status().json()["session_id"])
            assert job in stall.wait_held(timeout_s=60)  # rendered; its upload hangs
            ledger.fault("deadline passes mid-upload")
            ledger.submitted += 1
            # The sweeper ends it while the PUT still hangs: nobody waits for storage.
            final = wait_terminal(client, f"/api/{job}/status", timeout_s=30)
            stall.release()  # the PUT lands after the job ended: its object goes again
            wait_for(
                lambda: any(
                    e["event"] == "job.discarded" and e["job_id"] == job
                    for e in uploader_log(stack)
                ),
                timeout_s=30,
                what="the uploader to discard the late object",
            )
    ledger.failed_as_intended += final["error"] == "deadline exceeded"
    assert (final["status"], final["error"]) == ("failed", "deadline exceeded")
    assert stored(s3_server, bucket, job) == 0


def test_the_completed_log_line_names_keys_and_never_a_presigned_url(
    stack: Stack, s3_server: S3Server, bucket: str, start_uploader: StartUploader
) -> None:
    start_uploader(bucket, DARKROOM_S3_PRESIGN="true")
    with httpx.Client(base_url=stack.base_url, timeout=30) as client:
        job = submit(client)
        finished = wait_terminal(client, f"/api/{job}/status")
    assert finished["status"] == "completed"
    assert "X-Amz-Signature=" in finished["result_url"]  # the client gets a presigned URL

    (completed,) = [
        e for e in uploader_log(stack) if e["event"] == "job.completed" and e["job_id"] == job
    ]
    (key,) = completed["keys"]
    assert job in key and key.startswith("generations/")
    assert "X-Amz-Signature" not in stack.log("uploader")
