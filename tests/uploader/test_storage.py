"""Storage backends against real targets: a temp directory and a SeaweedFS S3 server."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest

from tests.support.s3_server import READ_ONLY_ACCESS_KEY_ID, READ_ONLY_SECRET_ACCESS_KEY, S3Server
from uploader.storage import LocalStorage, S3Storage, StorageError, result_key

PNG = b"\x89PNG\r\n\x1a\n" + b"darkroom test image" * 64


def _unique_bucket() -> str:
    return f"darkroom-{uuid.uuid4().hex[:12]}"


async def _open(server: S3Server, bucket: str, **overrides: object) -> S3Storage:
    kwargs: dict[str, object] = {
        "bucket": bucket,
        "region": server.region,
        "endpoint_url": server.endpoint_url,
        "access_key_id": server.access_key_id,
        "secret_access_key": server.secret_access_key,
        # Fail fast: a test that hits a dead server should not wait on production timeouts.
        "connect_timeout_s": 1.0,
        "read_timeout_s": 10.0,
        "max_attempts": 2,
    }
    kwargs.update(overrides)
    return await S3Storage.open(**kwargs)  # type: ignore[arg-type]


@pytest.fixture
def bucket(s3_server: S3Server) -> str:
    """A fresh, private bucket per test, so tests never see each other's objects."""
    name = _unique_bucket()
    s3_server.client().create_bucket(Bucket=name)
    return name


@pytest.fixture
async def storage(s3_server: S3Server, bucket: str) -> AsyncIterator[S3Storage]:
    store = await _open(s3_server, bucket)
    try:
        yield store
    finally:
        await store.aclose()


# --- result_key -------------------------------------------------------------------------------


def test_result_key_uses_the_seed_format() -> None:
    created = datetime(2025, 1, 2, 3, 4, 5)
    assert result_key("abc123", created, 0, "png") == "generations/20250102_030405_abc123.png"


def test_result_key_numbers_extra_outputs_before_the_extension() -> None:
    created = datetime(2025, 1, 2, 3, 4, 5)
    assert result_key("abc123", created, 1, "png") == "generations/20250102_030405_abc123_1.png"
    assert result_key("abc123", created, 3, ".mp4") == "generations/20250102_030405_abc123_3.mp4"


def test_result_key_is_stable_across_time_zones() -> None:
    utc = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    paris = utc.astimezone(timezone(timedelta(hours=1)))
    assert result_key("j", paris, 0, "png") == result_key("j", utc, 0, "png")
    assert result_key("j", utc, 0, "png") == "generations/20250102_030405_j.png"


# --- LocalStorage -----------------------------------------------------------------------------


async def test_local_put_writes_the_file_and_returns_its_output_url(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path, "http://localhost:8000/")
    key = result_key("job1", datetime(2025, 1, 2, 3, 4, 5), 0, "png")

    url = await store.put(key, PNG, "image/png")

    assert url == f"http://localhost:8000/output/{key}"
    assert (tmp_path / key).read_bytes() == PNG
    await store.aclose()


async def test_local_put_retry_overwrites_and_leaves_no_temp_files(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path, "http://localhost:8000")
    key = "generations/20250102_030405_job1.png"

    first = await store.put(key, b"first attempt, longer than the second", "image/png")
    second = await store.put(key, b"retry", "image/png")

    assert first == second
    assert (tmp_path / key).read_bytes() == b"retry"
    assert [p.name for p in (tmp_path / "generations").iterdir()] == ["20250102_030405_job1.png"]


async def test_local_put_reports_an_unwritable_root_as_storage_error(tmp_path: Path) -> None:
    # A regular file where the directory should be: mkdir fails however privileged we are.
    blocker = tmp_path / "blocked"
    blocker.write_text("not a directory")
    store = LocalStorage(blocker, "http://localhost:8000")

    with pytest.raises(StorageError, match="blocked"):
        await store.put("generations/x.png", PNG, "image/png")


async def test_local_delete_removes_the_file_and_ignores_a_missing_one(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path, "http://localhost:8000")
    key = "generations/20250102_030405_gone.png"
    await store.put(key, PNG, "image/png")

    await store.delete(key)
    await store.delete(key)

    assert not (tmp_path / key).exists()


async def test_local_put_refuses_keys_that_escape_the_root(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path / "out", "http://localhost:8000")
    with pytest.raises(ValueError, match="escapes"):
        await store.put("../outside.png", PNG, "image/png")
    assert not (tmp_path / "outside.png").exists()


# --- S3Storage: URLs (no server needed) ------------------------------------------------------


async def test_s3_urls_follow_the_configured_addressing() -> None:
    aws = await S3Storage.open(
        bucket="bkt",
        region="eu-west-1",
        endpoint_url=None,
        access_key_id="id",
        secret_access_key="secret",
    )
    cdn = await S3Storage.open(
        bucket="bkt",
        region="eu-west-1",
        endpoint_url="http://minio:9000/",
        access_key_id="id",
        secret_access_key="secret",
        public_base_url="https://cdn.example.com/",
    )
    path_style = await S3Storage.open(
        bucket="bkt",
        region="us-east-1",
        endpoint_url="http://minio:9000/",
        access_key_id="id",
        secret_access_key="secret",
    )
    try:
        key = "generations/20250102_030405_j.png"
        assert aws.url_for(key) == f"https://bkt.s3.eu-west-1.amazonaws.com/{key}"
        assert cdn.url_for(key) == f"https://cdn.example.com/{key}"
        assert path_style.url_for(key) == f"http://minio:9000/bkt/{key}"
    finally:
        for store in (aws, cdn, path_style):
            await store.aclose()


# --- S3Storage against SeaweedFS -------------------------------------------------------------


async def test_presigned_url_serves_exactly_the_bytes_and_content_type(
    s3_server: S3Server, bucket: str
) -> None:
    store = await _open(s3_server, bucket, presign=True, presign_expires_s=120)
    try:
        url = await store.put("generations/20250102_030405_p.png", PNG, "image/png")
    finally:
        await store.aclose()

    assert "X-Amz-Signature=" in url
    async with httpx.AsyncClient() as http:
        response = await http.get(url)
    assert response.status_code == 200
    assert response.content == PNG
    assert response.headers["content-type"] == "image/png"


async def test_unsigned_put_returns_the_path_style_url_and_stores_the_object(
    s3_server: S3Server, bucket: str, storage: S3Storage
) -> None:
    key = "generations/20250102_030405_u.png"

    url = await storage.put(key, PNG, "image/png")

    assert url == f"{s3_server.endpoint_url}/{bucket}/{key}"
    # The bucket is private, so read it back the way an operator would: authenticated.
    obj = s3_server.client().get_object(Bucket=bucket, Key=key)
    assert obj["Body"].read() == PNG
    assert obj["ContentType"] == "image/png"


async def test_second_put_to_the_same_key_overwrites(
    s3_server: S3Server, bucket: str, storage: S3Storage
) -> None:
    key = result_key("retried", datetime(2025, 1, 2, 3, 4, 5), 0, "png")

    await storage.put(key, b"first upload", "image/png")
    await storage.put(key, b"retried upload", "image/png")

    client = s3_server.client()
    listed = client.list_objects_v2(Bucket=bucket)
    assert [item["Key"] for item in listed.get("Contents", [])] == [key]
    assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == b"retried upload"


async def test_ensure_bucket_creates_once_and_is_idempotent(s3_server: S3Server) -> None:
    name = _unique_bucket()
    store = await _open(s3_server, name)
    try:
        await store.ensure_bucket()
        await store.ensure_bucket()
        await store.put("generations/x.png", PNG, "image/png")
    finally:
        await store.aclose()

    names = [b["Name"] for b in s3_server.client().list_buckets()["Buckets"]]
    assert names.count(name) == 1


async def test_put_to_a_missing_bucket_names_bucket_key_and_fix(s3_server: S3Server) -> None:
    name = _unique_bucket()
    store = await _open(s3_server, name)
    try:
        with pytest.raises(StorageError) as caught:
            await store.put("generations/x.png", PNG, "image/png")
    finally:
        await store.aclose()

    message = str(caught.value)
    assert f"s3://{name}/generations/x.png" in message
    assert "NoSuchBucket" in message
    assert "darkroom up" in message
    assert caught.value.retryable is False


async def test_put_with_a_wrong_secret_is_a_storage_error(s3_server: S3Server, bucket: str) -> None:
    store = await _open(s3_server, bucket, secret_access_key="not-the-secret")
    try:
        with pytest.raises(StorageError, match="SignatureDoesNotMatch") as caught:
            await store.put("generations/x.png", PNG, "image/png")
    finally:
        await store.aclose()
    assert caught.value.retryable is False


async def test_put_fails_promptly_while_the_server_is_down_and_recovers(
    s3_server: S3Server, bucket: str, storage: S3Storage
) -> None:
    key = "generations/20250102_030405_outage.png"
    await storage.put(key, b"before the outage", "image/png")

    async with s3_server.adown():
        started = time.monotonic()
        with pytest.raises(StorageError) as caught:
            await storage.put(key, PNG, "image/png")
        elapsed_s = time.monotonic() - started

    # Two attempts with a 1 s connect timeout and standard back-off: seconds, not minutes.
    assert elapsed_s < 5
    assert bucket in str(caught.value) and s3_server.endpoint_url in str(caught.value)
    assert caught.value.retryable is True

    # Same storage object, same client: the uploader's retry just works once S3 is back.
    url = await storage.put(key, PNG, "image/png")
    assert url.endswith(key)
    obj = s3_server.client().get_object(Bucket=bucket, Key=key)
    assert obj["Body"].read() == PNG


async def test_delete_removes_the_object_and_ignores_a_missing_one(
    s3_server: S3Server, bucket: str, storage: S3Storage
) -> None:
    key = "generations/20250102_030405_gone.png"
    await storage.put(key, PNG, "image/png")

    await storage.delete(key)
    await storage.delete(key)

    assert "Contents" not in s3_server.client().list_objects_v2(Bucket=bucket)


async def test_put_without_write_permission_is_a_permanent_error_naming_the_bucket(
    s3_server: S3Server, bucket: str
) -> None:
    store = await _open(
        s3_server,
        bucket,
        access_key_id=READ_ONLY_ACCESS_KEY_ID,
        secret_access_key=READ_ONLY_SECRET_ACCESS_KEY,
    )
    try:
        with pytest.raises(StorageError) as caught:
            await store.put("generations/x.png", PNG, "image/png")
    finally:
        await store.aclose()

    assert caught.value.retryable is False
    # For the job's client: the code, the bucket and the fix, not our endpoint.
    assert caught.value.summary == (
        f"AccessDenied on bucket '{bucket}': "
        "the credentials lack s3:PutObject / s3:CreateBucket on this bucket"
    )
    # For the operator: where exactly.
    assert s3_server.endpoint_url in str(caught.value)


async def test_put_with_an_unknown_access_key_is_a_permanent_error_saying_what_to_check(
    s3_server: S3Server, bucket: str
) -> None:
    store = await _open(s3_server, bucket, access_key_id="AKIANOSUCHKEY0000000")
    try:
        with pytest.raises(StorageError) as caught:
            await store.put("generations/x.png", PNG, "image/png")
    finally:
        await store.aclose()

    assert caught.value.retryable is False
    assert (
        caught.value.summary == f"InvalidAccessKeyId on bucket '{bucket}': check AWS_ACCESS_KEY_ID"
    )
