"""What the live workers say about themselves: their heartbeats, read in one call."""

from __future__ import annotations

import time

from redis.asyncio import Redis

from common.keys import Keys
from common.schemas import WorkerHeartbeat

# A worker silent for this long is gone (it beats every few seconds); the sweeper prunes it.
HEARTBEAT_STALE_S = 15.0


async def live_workers(redis: Redis, keys: Keys) -> list[WorkerHeartbeat]:
    beats = [WorkerHeartbeat.model_validate_json(raw) for raw in (await redis.hvals(keys.workers))]
    now = time.time()
    return [beat for beat in beats if now - beat.ts < HEARTBEAT_STALE_S]
