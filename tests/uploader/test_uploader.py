"""The uploader in process, on a real Redis and SeaweedFS: jobs that ended before or during their
upload leave nothing stored, permanent storage errors fail the job at once, and a stop lets the
uploads in flight finish."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis

from common.jobs import JobStore
from common.keys import UPLOADERS_GROUP, Keys
from common.redis_server import RedisServer
from common.result_cache import SERVED_FROM_CACHE, CachedResult, ResultCache
from common.schemas import JobSpec, JobStatus, OutputBlob, RenderedJob, RenderParams, Task, utcnow
from tests.support.s3_server import S3Server
from tests.support.slow_s3 import SlowS3Proxy
from tests.support.waiting import async_wait_for
from uploader.storage import S3Storage
from uploader.uploader import Uploader

PNG = b"\x89PNG\r\n\x1a\n" + b"rendered by a test" * 64
PARAMS = RenderParams(
    prompt="p", width=64, height=64, num_inference_steps=2, guidance_scale=1.0, seed=1
)


class Rig:
    """Uploaders on their own key prefix, fed ``rendered`` entries the way a worker hands off."""

    def __init__(self, redis: Redis, blobs: Redis, s3: S3Server) -> None:
        self.redis, self.blobs, self.s3 = redis, blobs, s3
        self.keys = Keys(f"uploader-test-{uuid.uuid4().hex[:8]}:")
        self.jobs = JobStore(redis, self.keys, task_ttl_s=600)
        self.bucket = f"darkroom-{uuid.uuid4().hex[:12]}"
        s3.client().create_bucket(Bucket=self.bucket)

    async def hand_off(self, cache_digest: str | None = None) -> RenderedJob:
        """A job rendered and handed to the uploader: record "processing", bytes in a blob."""
        spec = await self.rendering()
        return await self.hand_off_of(spec, cache_digest)

    async def rendering(self) -> JobSpec:
        """A job a worker is rendering: its record says "processing"."""
        spec = JobSpec(
            job_id=str(uuid.uuid4()), model="sd", task=Task.T2I, params=PARAMS, created_at=utcnow()
        )
        await self.jobs.submit(spec, message="Queued")
        await self.jobs.emit(spec.job_id, status=JobStatus.PROCESSING, message="uploading")
        return spec

    async def hand_off_of(self, spec: JobSpec, cache_digest: str | None = None) -> RenderedJob:
        """The job's bytes in a blob and its ``rendered`` entry, as the worker's hand-off."""
        blob = OutputBlob(
            key=self.keys.blob(spec.job_id, "output:0"), content_type="image/png", extension="png"
        )
        await self.blobs.set(blob.key, PNG, ex=600)
        rendered = RenderedJob(
            job_id=spec.job_id,
            created_at=spec.created_at,
            outputs=[blob],
            cache_digest=cache_digest,
        )
        await self.redis.xadd(self.keys.rendered, {"rendered": rendered.model_dump_json()})
        return rendered

    @contextlib.asynccontextmanager
    async def uploader(
        self,
        *,
        endpoint_url: str | None = None,
        bucket: str | None = None,
        name: str = "u",
        drain_grace_s: float = 60.0,
        upload_concurrency: int = 8,
        presign: bool = False,
        result_cache_ttl_s: int | None = None,
    ) -> AsyncIterator[tuple[Uploader, asyncio.Event, asyncio.Task[None]]]:
        """A running uploader; the block may set the stop event and await the task itself."""
        storage = await S3Storage.open(
            bucket=bucket or self.bucket,
            region=self.s3.region,
            endpoint_url=endpoint_url or self.s3.endpoint_url,
            access_key_id=self.s3.access_key_id,
            secret_access_key=self.s3.secret_access_key,
            connect_timeout_s=1.0,
            read_timeout_s=30.0,
            presign=presign,
        )
        uploader = Uploader(
            redis=self.redis, blobs=self.blobs, keys=self.keys, jobs=self.jobs, storage=storage,
            consumer_name=name, block_ms=100, claim_idle_ms=30_000, drain_grace_s=drain_grace_s,
            upload_concurrency=upload_concurrency, result_cache_ttl_s=result_cache_ttl_s,
        )  # fmt: skip
        stop = asyncio.Event()
        task = asyncio.create_task(uploader.run(stop))
        try:
            yield uploader, stop, task
        finally:
            stop.set()
            await asyncio.wait_for(task, timeout=60)
            await storage.aclose()

    async def waiting(self) -> int:
        """Entries in the rendered stream: acked ones are deleted."""
        return int(await self.redis.xlen(self.keys.rendered))

    async def wait_until_settled(self, timeout_s: float = 30) -> None:
        async def settled() -> bool:
            return await self.waiting() == 0

        await async_wait_for(settled, timeout_s=timeout_s, what="the rendered stream drained")

    async def status(self, job_id: str) -> JobStatus:
        record = await self.jobs.get(job_id)
        assert record is not None
        return record.status

    def stored(self, job_id: str) -> list[str]:
        listed = self.s3.client().list_objects_v2(Bucket=self.bucket, Prefix="generations/")
        return [item["Key"] for item in listed.get("Contents", []) if job_id in item["Key"]]


@pytest.fixture
async def rig(redis_server: RedisServer, s3_server: S3Server) -> AsyncIterator[Rig]:
    redis = Redis.from_url(redis_server.url, decode_responses=True)
    blobs = Redis.from_url(redis_server.url)
    yield Rig(redis, blobs, s3_server)
    await redis.aclose()
    await blobs.aclose()


@pytest.fixture
def proxy(s3_server: S3Server) -> Iterator[SlowS3Proxy]:
    with SlowS3Proxy(s3_server.endpoint_url) as proxy:
        yield proxy


async def test_a_job_completes_with_its_object_stored(rig: Rig) -> None:
    rendered = await rig.hand_off()
    async with rig.uploader():
        await rig.wait_until_settled()

    assert await rig.status(rendered.job_id) == JobStatus.COMPLETED
    (key,) = rig.stored(rendered.job_id)
    assert rig.s3.client().get_object(Bucket=rig.bucket, Key=key)["Body"].read() == PNG
    assert await rig.blobs.exists(rendered.outputs[0].key) == 0


async def test_a_job_canceled_after_its_hand_off_is_not_stored(
    rig: Rig, proxy: SlowS3Proxy
) -> None:
    rendered = await rig.hand_off()
    await rig.jobs.emit(rendered.job_id, status=JobStatus.CANCELED, message="Canceled")
    put = proxy.stall(rendered.job_id, hold_s=0)  # only to see whether a PUT is made

    async with rig.uploader(endpoint_url=proxy.endpoint_url):
        await rig.wait_until_settled()

    assert not put.held.is_set()  # the bytes never left for storage
    assert rig.stored(rendered.job_id) == []
    assert await rig.status(rendered.job_id) == JobStatus.CANCELED
    assert await rig.blobs.exists(rendered.outputs[0].key) == 0


async def test_a_job_canceled_while_its_upload_hangs_leaves_no_object(
    rig: Rig, proxy: SlowS3Proxy
) -> None:
    rendered = await rig.hand_off()
    stall = proxy.stall(rendered.job_id)

    async with rig.uploader(endpoint_url=proxy.endpoint_url):
        await stall.await_held(timeout_s=30)
        await rig.jobs.emit(rendered.job_id, status=JobStatus.CANCELED, message="Canceled")
        stall.release()  # the PUT lands after the job ended: its object must go again
        await rig.wait_until_settled()

    assert rig.stored(rendered.job_id) == []
    record = await rig.jobs.get(rendered.job_id)
    assert record is not None and record.status == JobStatus.CANCELED
    assert not record.result_urls


async def test_a_missing_bucket_fails_the_job_at_once_naming_the_bucket(rig: Rig) -> None:
    rendered = await rig.hand_off()
    missing = f"darkroom-missing-{uuid.uuid4().hex[:8]}"

    async with rig.uploader(bucket=missing):
        # Retried, the entry would stay pending for minutes; a permanent error acks it at once.
        await rig.wait_until_settled(timeout_s=20)

    record = await rig.jobs.get(rendered.job_id)
    assert record is not None and record.status == JobStatus.FAILED
    assert record.error is not None
    assert record.error.startswith("Could not store the result: NoSuchBucket")
    assert f"bucket '{missing}'" in record.error
    assert "S3_BUCKET_NAME" in record.error  # what to do about it
    assert rig.s3.endpoint_url not in record.error  # the client is not told our endpoint
    assert await rig.blobs.exists(rendered.outputs[0].key) == 0


async def test_a_stop_lets_the_upload_in_flight_finish(rig: Rig, proxy: SlowS3Proxy) -> None:
    rendered = await rig.hand_off()
    stall = proxy.stall(rendered.job_id)

    async with rig.uploader(endpoint_url=proxy.endpoint_url) as (_, stop, task):
        await stall.await_held(timeout_s=30)
        stop.set()
        # The consumer loop sees the stop within a read (100 ms); run() must not return while
        # the upload hangs.
        done, _ = await asyncio.wait({task}, timeout=1.0)
        assert not done
        stall.release()
        await asyncio.wait_for(task, timeout=30)
        # run() has returned: the upload finished before it did, nothing left behind.
        assert await rig.status(rendered.job_id) == JobStatus.COMPLETED
        assert await rig.waiting() == 0

    assert len(rig.stored(rendered.job_id)) == 1


async def test_an_upload_past_the_drain_grace_goes_back_to_the_group(
    rig: Rig, proxy: SlowS3Proxy
) -> None:
    rendered = await rig.hand_off()
    stall = proxy.stall(rendered.job_id)

    async with rig.uploader(endpoint_url=proxy.endpoint_url, drain_grace_s=0.2) as (_, stop, task):
        await stall.await_held(timeout_s=30)
        stop.set()
        await asyncio.wait_for(task, timeout=30)
    assert await rig.status(rendered.job_id) == JobStatus.PROCESSING
    # Given back: it looks idle for longer than any member's claim idle time.
    (entry,) = await rig.redis.xpending_range(rig.keys.rendered, UPLOADERS_GROUP, "-", "+", 10)
    assert entry["time_since_delivered"] > 30_000

    # Released, not left for the claim idle time (30 s): the next member takes it at once, while
    # the first PUT still hangs.
    async with rig.uploader(endpoint_url=proxy.endpoint_url, name="v"):
        await rig.wait_until_settled(timeout_s=20)
    assert await rig.status(rendered.job_id) == JobStatus.COMPLETED
    assert len(rig.stored(rendered.job_id)) == 1


async def test_a_stop_is_not_held_up_when_every_upload_hangs(rig: Rig, proxy: SlowS3Proxy) -> None:
    hung = await rig.hand_off()
    stall = proxy.stall(hung.job_id)
    waiting = await rig.hand_off()  # read only once a slot frees: never, here

    async with rig.uploader(
        endpoint_url=proxy.endpoint_url, upload_concurrency=1, drain_grace_s=0.2
    ) as (_, stop, task):
        await stall.await_held(timeout_s=30)
        stop.set()
        # Within the grace and a read, not after the hanging PUT times out (30 s here).
        await asyncio.wait_for(task, timeout=10)

    assert await rig.status(hung.job_id) == JobStatus.PROCESSING
    assert await rig.status(waiting.job_id) == JobStatus.PROCESSING
    assert await rig.waiting() == 2  # both still there for the next uploader


async def test_a_duplicate_delivery_never_removes_the_completed_jobs_object(
    rig: Rig, proxy: SlowS3Proxy
) -> None:
    rendered = await rig.hand_off()
    # The same hand-off delivered twice (say, taken over from a member that stalled).
    await rig.redis.xadd(rig.keys.rendered, {"rendered": rendered.model_dump_json()})
    stall = proxy.stall(rendered.job_id)

    async with rig.uploader(endpoint_url=proxy.endpoint_url):
        await stall.await_held(timeout_s=30)

        async def completed() -> bool:
            return await rig.status(rendered.job_id) == JobStatus.COMPLETED

        await async_wait_for(completed, timeout_s=30, what="the second delivery to complete")
        stall.release()  # the first finds the job completed already: same key, same bytes
        await rig.wait_until_settled()

    assert len(rig.stored(rendered.job_id)) == 1


async def test_a_completed_job_is_cached_and_a_hit_gets_a_freshly_signed_url(rig: Rig) -> None:
    rendered = await rig.hand_off(cache_digest="d1")
    async with rig.uploader(presign=True, result_cache_ttl_s=300):
        await rig.wait_until_settled()
        (key,) = rig.stored(rendered.job_id)
        found = await ResultCache(rig.redis, rig.keys).find(["d1"])
        assert found == ("d1", CachedResult(job_id=rendered.job_id, keys=[key]))
        assert 0 < await rig.redis.ttl(rig.keys.result_cache("d1")) <= 300

        # A hit, as the gateway writes it: the job, straight to the uploader with the keys.
        spec = JobSpec(
            job_id=str(uuid.uuid4()), model="sd", task=Task.T2I, params=PARAMS, created_at=utcnow()
        )
        hit = RenderedJob(
            job_id=spec.job_id, created_at=spec.created_at, outputs=[], cached_keys=[key]
        )
        await rig.jobs.submit(spec, message="Queued", rendered=hit)
        await rig.wait_until_settled()

    record = await rig.jobs.get(spec.job_id)
    assert record is not None and record.status == JobStatus.COMPLETED
    assert record.message == SERVED_FROM_CACHE
    (url,) = record.result_urls
    assert "X-Amz-Signature=" in url and key in url
    async with httpx.AsyncClient() as client:
        assert (await client.get(url)).raise_for_status().content == PNG
    assert rig.stored(spec.job_id) == []  # nothing new stored


async def test_a_hit_canceled_before_the_uploader_deletes_nothing(rig: Rig) -> None:
    rendered = await rig.hand_off()
    async with rig.uploader():
        await rig.wait_until_settled()
    (key,) = rig.stored(rendered.job_id)

    spec = JobSpec(
        job_id=str(uuid.uuid4()), model="sd", task=Task.T2I, params=PARAMS, created_at=utcnow()
    )
    hit = RenderedJob(job_id=spec.job_id, created_at=spec.created_at, outputs=[], cached_keys=[key])
    await rig.jobs.submit(spec, message="Queued", rendered=hit)
    await rig.jobs.emit(spec.job_id, status=JobStatus.CANCELED, message="Canceled")
    async with rig.uploader():
        await rig.wait_until_settled()

    assert await rig.status(spec.job_id) == JobStatus.CANCELED
    assert rig.stored(rendered.job_id) == [key]  # the earlier job's object stays


async def test_an_output_that_expired_fails_the_job(rig: Rig) -> None:
    rendered = await rig.hand_off()
    await rig.blobs.delete(rendered.outputs[0].key)  # its TTL ran out before the upload
    async with rig.uploader():
        await rig.wait_until_settled()

    record = await rig.jobs.get(rendered.job_id)
    assert record is not None and record.status == JobStatus.FAILED
    assert record.error == "The rendered output expired before it was stored."


@pytest.fixture
async def failover_rig(tmp_path: Path, s3_server: S3Server) -> AsyncIterator[tuple[Rig, Redis]]:
    """A rig on a Redis of its own, and a standby beside it (for a failover)."""
    primary, standby = RedisServer(tmp_path / "primary"), RedisServer(tmp_path / "standby")
    primary.start()
    standby.start()
    redis = Redis.from_url(primary.url, decode_responses=True)
    blobs = Redis.from_url(primary.url)
    other = Redis.from_url(standby.url, decode_responses=True)
    yield Rig(redis, blobs, s3_server), other
    for client in (redis, blobs, other):
        await client.aclose()
    primary.stop(kill=True)
    standby.stop(kill=True)


async def linked(replica: Redis) -> bool:
    return (await replica.info("replication")).get("master_link_status") == "up"


async def test_a_hand_off_a_failover_took_back_leaves_the_job_to_render_again(
    failover_rig: tuple[Rig, Redis], proxy: SlowS3Proxy
) -> None:
    """The standby has the job's record but not its hand-off; it takes over while the upload
    runs, then the old primary leads again with the standby's data. The blob is gone with the
    entry: the render is redone (the job's own entry is pending again), so the job must not fail
    for an output that "expired"."""
    rig, standby = failover_rig
    primary_port = rig.redis.connection_pool.connection_kwargs["port"]
    standby_port = standby.connection_pool.connection_kwargs["port"]
    spec = await rig.rendering()
    await standby.replicaof("127.0.0.1", primary_port)
    await async_wait_for(lambda: linked(standby), timeout_s=30, what="the standby to sync")
    await standby.replicaof("NO", "ONE")  # from here on it misses what the primary takes

    rendered = await rig.hand_off_of(spec)
    put = proxy.stall(spec.job_id)
    async with rig.uploader(endpoint_url=proxy.endpoint_url):
        await asyncio.to_thread(put.wait_held, 30)  # read, and uploading
        await rig.redis.replicaof("127.0.0.1", standby_port)  # the failover
        await async_wait_for(lambda: linked(rig.redis), timeout_s=30, what="the failover")
        put.release()  # the upload's last step now meets READONLY, and retries
        await asyncio.sleep(0.5)
        await rig.redis.replicaof("NO", "ONE")  # the old primary leads again, without the hand-off
        assert not await rig.blobs.exists(rendered.outputs[0].key)
        assert await rig.waiting() == 0
        # Leaving the block stops the uploader, which waits for the upload in flight to end.

    assert await rig.status(spec.job_id) == JobStatus.PROCESSING
