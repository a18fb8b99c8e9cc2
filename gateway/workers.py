"""What the live workers say about themselves: read from their heartbeat keys."""

from __future__ import annotations

from redis.asyncio import Redis

from common.keys import Keys
from common.schemas import WorkerHeartbeat


async def live_workers(redis: Redis, keys: Keys) -> list[WorkerHeartbeat]:
    names = [name async for name in redis.scan_iter(match=keys.worker_pattern, count=100)]
    if not names:
        return []
    # A key may expire between SCAN and MGET: skip the gaps.
    return [WorkerHeartbeat.model_validate_json(raw) for raw in await redis.mget(names) if raw]
