"""Redis error replies from a real server are classified as transient, and retried through."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator

import pytest
import redis
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from common.redis_errors import REDIS_TRANSIENT, ScriptBusyError, retry_transient
from common.redis_server import RedisServer
from tests.conftest import redis_of_its_own


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A server of its own: these tests make it refuse work."""
    with redis_of_its_own(tmp_path_factory, "errors-redis") as own:
        yield own


@pytest.fixture
async def client(server: RedisServer) -> AsyncIterator[Redis]:
    async with Redis.from_url(server.url, decode_responses=True) as connection:
        yield connection
        await connection.config_set("maxmemory", 0)


async def test_a_full_redis_is_transient_and_a_write_goes_through_once_it_has_room(
    client: Redis, server: RedisServer
) -> None:
    await client.config_set("maxmemory", 1)
    with pytest.raises(REDIS_TRANSIENT) as refused:
        await client.set("k", "v")
    assert "maxmemory" in str(refused.value)

    async def room_soon() -> None:
        await asyncio.sleep(0.3)
        async with Redis.from_url(server.url) as admin:
            await admin.config_set("maxmemory", 0)

    freeing = asyncio.create_task(room_soon())
    assert await retry_transient(lambda: client.set("k", "v"), for_s=10) is True
    await freeing
    assert await client.get("k") == "v"


async def test_retrying_gives_up_after_its_time(client: Redis) -> None:
    await client.config_set("maxmemory", 1)
    with pytest.raises(REDIS_TRANSIENT):
        await retry_transient(lambda: client.set("k", "v"), for_s=0.5)


async def test_not_wanted_any_more_stops_at_once(client: Redis) -> None:
    await client.config_set("maxmemory", 1)
    with pytest.raises(REDIS_TRANSIENT):
        await retry_transient(lambda: client.set("k", "v"), for_s=60, still_wanted=lambda: False)


async def test_other_error_replies_are_not_transient(client: Redis) -> None:
    await client.set("text", "v")
    with pytest.raises(ResponseError) as wrong_type:
        await client.lpush("text", "x")
    assert not isinstance(wrong_type.value, REDIS_TRANSIENT)  # a bug: never retried blindly


def test_a_server_busy_in_a_slow_script_is_transient(server: RedisServer) -> None:
    admin = redis.Redis.from_url(server.url)
    admin.config_set("busy-reply-threshold", 50)  # ms; lua-time-limit before Redis 7
    looping = threading.Thread(
        target=lambda: _ignore(
            lambda: redis.Redis.from_url(server.url).eval("while true do end", 0)
        )
    )
    looping.start()
    try:
        deadline = time.monotonic() + 10
        with pytest.raises(ScriptBusyError):
            while time.monotonic() < deadline:  # until the script has run past the threshold
                redis.Redis.from_url(server.url).ping()
        assert issubclass(ScriptBusyError, REDIS_TRANSIENT)
    finally:
        for _ in range(100):
            try:
                admin.script_kill()
                break
            except ResponseError:
                continue  # not yet busy
        looping.join()


def _ignore(call: object) -> None:
    try:
        call()  # type: ignore[operator]
    except redis.RedisError:
        pass  # the script is killed: that is how the test ends it
