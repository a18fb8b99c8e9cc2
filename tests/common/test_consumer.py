"""The shared consumer loop: reads, takes over a dead member's entries, survives restarts."""

from __future__ import annotations

import asyncio
from pathlib import Path

from redis.asyncio import Redis

from common.consumer import Delivery, StreamConsumer, StreamPolicy
from common.redis_server import RedisServer
from tests.support.ledger import Ledger
from tests.support.waiting import async_wait_for


def consumer(
    redis: Redis, stream: str, name: str, seen: list[Delivery], **policy: int
) -> StreamConsumer:
    async def handle(deliveries: list[Delivery]) -> None:
        for delivery in deliveries:
            seen.append(delivery)
            await c.ack(delivery)

    c = StreamConsumer(
        redis=redis,
        streams=[stream],
        group="g",
        consumer=name,
        handler=handle,
        dead_stream=f"{stream}:dead",
        block_ms=100,
        policies={stream: StreamPolicy(**policy)},
    )
    return c


async def _run_until(c: StreamConsumer, condition: object, what: str) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(c.run(stop))
    try:
        await async_wait_for(condition, timeout_s=15, what=what)  # type: ignore[arg-type]
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=5)


async def test_reads_acks_and_deletes(redis: Redis) -> None:
    seen: list[Delivery] = []
    c = consumer(redis, "consumer-test:a", "one", seen)
    await c.ensure_groups()
    await c.ensure_groups()  # BUSYGROUP is expected and ignored
    await redis.xadd("consumer-test:a", {"n": "1"})

    async def done() -> bool:
        return len(seen) == 1

    await _run_until(c, done, "one delivery")
    assert seen[0].fields == {"n": "1"} and not seen[0].reclaimed
    assert await redis.xlen("consumer-test:a") == 0
    assert (await redis.xpending("consumer-test:a", "g"))["pending"] == 0


async def test_takes_over_an_entry_a_dead_member_left_pending(redis: Redis) -> None:
    stream = "consumer-test:b"
    seen: list[Delivery] = []
    c = consumer(redis, stream, "alive", seen, claim_idle_ms=200)
    await c.ensure_groups()
    await redis.xadd(stream, {"job": "x"})
    # A member that read the entry and died without acking it.
    await redis.xreadgroup("g", "dead", {stream: ">"}, count=1)

    async def done() -> bool:
        return len(seen) == 1

    await _run_until(c, done, "the reclaimed entry")
    assert seen[0].reclaimed and seen[0].fields == {"job": "x"}
    assert (await redis.xpending(stream, "g"))["pending"] == 0


async def test_survives_a_redis_restart(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis", appendonly=True)
    server.start()
    client = Redis.from_url(server.url, decode_responses=True)
    seen: list[Delivery] = []
    c = consumer(client, "s", "one", seen)
    await c.ensure_groups()
    stop = asyncio.Event()
    task = asyncio.create_task(c.run(stop))
    try:
        await client.xadd("s", {"n": "before"})
        await async_wait_for(lambda: _value(len(seen) == 1), timeout_s=10, what="first entry")
        server.stop(kill=True)
        await asyncio.sleep(0.5)  # the loop is now failing and backing off
        server.start()
        await client.xadd("s", {"n": "after"})
        await async_wait_for(
            lambda: _value(len(seen) == 2), timeout_s=20, what="entry after restart"
        )
        assert [d.fields["n"] for d in seen] == ["before", "after"]
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=10)
        await client.aclose()
        server.stop()


async def _value(v: bool) -> bool:
    return v


async def test_an_entry_that_keeps_failing_goes_to_the_dead_stream(
    redis: Redis, ledger: Ledger
) -> None:
    stream = "consumer-test:poison"
    attempts: list[int] = []
    buried: list[Delivery] = []

    async def fail(deliveries: list[Delivery]) -> None:
        # Never acked: as if the worker died each time.
        attempts.extend(delivery.attempt for delivery in deliveries)

    async def on_dead(delivery: Delivery) -> None:
        buried.append(delivery)

    c = StreamConsumer(
        redis=redis, streams=[stream], group="g", consumer="w", handler=fail,
        dead_stream=f"{stream}:dead", block_ms=50,
        policies={stream: StreamPolicy(claim_idle_ms=50, max_deliveries=3)}, on_dead=on_dead,
    )  # fmt: skip
    await c.ensure_groups()
    await redis.xadd(stream, {"job": "poison"})

    async def dead() -> bool:
        return await redis.xlen(f"{stream}:dead") == 1

    await _run_until(c, dead, "the dead letter")
    ledger.fault("poison entry")
    ledger.failed_as_intended += 1
    assert attempts == [1, 2, 3]  # then no more: it never loops
    assert [d.fields for d in buried] == [{"job": "poison"}]
    ((_, entry),) = await redis.xrange(f"{stream}:dead")
    assert entry["attempts"] == "3" and entry["stream"] == stream
    assert await redis.xlen(stream) == 0


async def test_a_kept_claim_is_not_taken_over_and_a_lost_one_cannot_forward(redis: Redis) -> None:
    stream = "consumer-test:claims"
    mine = consumer(redis, stream, "busy", [], claim_idle_ms=1000)
    other = consumer(redis, stream, "other", [], claim_idle_ms=1000)
    await mine.ensure_groups()
    await redis.xadd(stream, {"job": "long"})
    (delivery,) = await mine._read_new()

    await asyncio.sleep(0.6)
    assert await mine.keep_claim(delivery)  # idle time back to zero
    await asyncio.sleep(0.6)
    assert await other._claim_stale() == []  # idle 0.6 s < 1 s: not stale

    await asyncio.sleep(0.5)
    (stolen,) = await other._claim_stale()  # the busy member went quiet: taken over
    assert stolen.attempt == 2
    assert not await mine.keep_claim(delivery)
    stale = {f"{stream}:blob:stale": b"\x89PNG stale bytes"}
    assert not await mine.forward(delivery, f"{stream}:out", "result", "stale", blobs=stale)
    assert await redis.xlen(f"{stream}:out") == 0
    assert await redis.exists(*stale) == 0  # a member that lost its claim writes nothing at all
    fresh = {f"{stream}:blob:fresh": b"\x89PNG fresh bytes"}
    assert await other.forward(
        stolen, f"{stream}:out", "result", "fresh", blobs=fresh, blob_ttl_s=60
    )
    assert [e[1] for e in await redis.xrange(f"{stream}:out")] == [{"result": "fresh"}]
    assert 0 < await redis.ttl(f"{stream}:blob:fresh") <= 60
