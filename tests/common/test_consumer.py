"""The shared consumer loop: reads, takes over a dead member's entries, survives restarts."""

from __future__ import annotations

import asyncio
from pathlib import Path

from redis.asyncio import Redis

from common.consumer import Delivery, StreamConsumer
from common.redis_server import RedisServer
from tests.support.waiting import async_wait_for


def consumer(
    redis: Redis, stream: str, name: str, seen: list[Delivery], **kw: int
) -> StreamConsumer:
    async def handle(delivery: Delivery) -> None:
        seen.append(delivery)
        await c.ack(delivery)

    c = StreamConsumer(
        redis=redis, streams=[stream], group="g", consumer=name, handler=handle, block_ms=100, **kw
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
