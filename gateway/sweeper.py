"""The sweeper: what no single job's worker can be trusted to do, done by one gateway replica.

- A job past its ``Cancel-After`` deadline is failed with "deadline exceeded" within about a
  second wherever it waits: queued (even on a route no worker serves), rendering (its worker finds
  its claim gone and stops), or uploading (the uploader finds it ended and stores nothing).
  Ending it clears its queue entry and input bytes (``JobStore.emit``).
- Input images whose TTL ran out without their job ending give their bytes back to the caps
  (the global one and their tenant's).
- Consumers that left their group (a restarted pod) are removed once idle with nothing pending;
  stale worker heartbeats are pruned.

Every gateway runs one; a Redis lock lets exactly one of them act at a time, and another takes
over within the lock's TTL if that one dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable, Sequence

from redis.asyncio import Redis
from redis.asyncio.lock import Lock
from redis.exceptions import LockError, ResponseError

from common.consumer import sleep_unless
from common.jobs import DEADLINE_EXCEEDED, JobStore
from common.keys import NOTIFIERS_GROUP, UPLOADERS_GROUP, WORKERS_GROUP, Keys
from common.logging import get_logger
from common.redis_errors import REDIS_TRANSIENT, backoff_s, describe
from common.schemas import JobStatus, WorkerHeartbeat
from common.tenants import LOCAL_TENANT
from gateway.workers import HEARTBEAT_STALE_S

log = get_logger(__name__)

LOCK_TTL_S = 5.0
# Deadlines are checked this often; the rest (inputs, consumers, heartbeats) every so many sweeps.
SWEEP_INTERVAL_S = 0.25
HOUSEKEEPING_INTERVAL_S = 30.0
DUE_PER_SWEEP = 200
# A heartbeat this old is from a worker that will not come back under that name.
HEARTBEAT_PRUNE_S = 4 * HEARTBEAT_STALE_S

# KEYS: inputs, input bytes; ARGV: now, limit, job record key prefix, tenant input bytes key
# prefix, the tenant of a record without one. Members are ``<job_id>:<bytes>``; the job's record
# (which outlives its input) names the tenant whose share the bytes were.
_PRUNE_INPUTS = """
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, member in ipairs(expired) do
  local job_id, size = string.match(member, '^(.*):(%d+)$')
  redis.call('ZREM', KEYS[1], member)
  redis.call('DECRBY', KEYS[2], tonumber(size))
  local tenant = redis.call('HGET', ARGV[3] .. job_id, 'tenant') or ARGV[5]
  local tenant_bytes = ARGV[4] .. tenant
  if redis.call('DECRBY', tenant_bytes, tonumber(size)) <= 0 then
    redis.call('DEL', tenant_bytes)
  end
end
return #expired
"""


def consumer_groups(keys: Keys, routes: Iterable[str]) -> list[tuple[str, str]]:
    """Every (stream, group) a service reads as a group member: each route's queue (workers),
    the rendered stream (uploaders) and the job events stream (notifiers)."""
    return [
        *((keys.job_stream(route), WORKERS_GROUP) for route in routes),
        (keys.rendered, UPLOADERS_GROUP),
        (keys.webhook_events, NOTIFIERS_GROUP),
    ]


class Sweeper:
    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        jobs: JobStore,
        *,
        groups: Sequence[tuple[str, str]],
        consumer_idle_s: float,
        interval_s: float = SWEEP_INTERVAL_S,
    ) -> None:
        """``groups``: the (stream, group) pairs whose departed consumers are removed."""
        self._redis = redis
        self._keys = keys
        self._jobs = jobs
        self._groups = groups
        self._consumer_idle_ms = int(consumer_idle_s * 1000)
        self._interval_s = interval_s
        self._prune_inputs = redis.register_script(_PRUNE_INPUTS)
        self._lock: Lock = redis.lock(keys.sweeper_lock, timeout=LOCK_TTL_S, thread_local=False)
        self._holding = False

    async def run(self, stop: asyncio.Event) -> None:
        failures = 0
        next_housekeeping = 0.0
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            try:
                if await self._hold_lock():
                    await self.end_overdue_jobs()
                    if loop.time() >= next_housekeeping:
                        await self.housekeeping()
                        next_housekeeping = loop.time() + HOUSEKEEPING_INTERVAL_S
                failures = 0
            except Exception as exc:  # a bug is logged loudly, but deadlines must still hold
                delay_s = backoff_s(failures)
                failures += 1
                if isinstance(exc, REDIS_TRANSIENT):
                    log.warning(
                        "sweeper.redis_unavailable", error=describe(exc), retry_in_s=delay_s
                    )
                else:
                    log.exception("sweeper.failed", retry_in_s=delay_s)
                await sleep_unless(stop, delay_s)
                continue
            await sleep_unless(stop, self._interval_s)
        if self._holding:
            with contextlib.suppress(LockError, *REDIS_TRANSIENT):  # else it expires on its own
                await self._lock.release()

    async def _hold_lock(self) -> bool:
        """Keep the lock if held (resetting its TTL), else try to take it; never waits."""
        if self._holding:
            try:
                await self._lock.reacquire()
                return True
            except LockError:
                log.warning("sweeper.lock_lost")
        self._holding = bool(await self._lock.acquire(blocking=False))
        if self._holding:
            log.info("sweeper.lock_taken")
        return self._holding

    async def end_overdue_jobs(self) -> int:
        """Fail every job whose deadline has passed; how many were failed now."""
        due: list[str] = await self._redis.zrangebyscore(  # type: ignore[assignment]
            self._keys.deadlines, "-inf", time.time(), start=0, num=DUE_PER_SWEEP
        )
        ended = 0
        for job_id in due:
            event = await self._jobs.emit(
                job_id,
                status=JobStatus.FAILED,
                message="Generation failed",
                error=DEADLINE_EXCEEDED,
            )
            if event is None:  # it ended meanwhile, or expired: only the deadline is left
                await self._redis.zrem(self._keys.deadlines, job_id)
            else:
                ended += 1
                log.info("job.deadline_exceeded", job_id=job_id)
        return ended

    async def housekeeping(self) -> None:
        await self.prune_expired_inputs()
        await self.remove_departed_consumers()
        await self.prune_heartbeats()

    async def prune_expired_inputs(self) -> int:
        """Inputs whose TTL ran out (their job never ended) no longer count against the cap."""
        pruned = int(
            await self._prune_inputs(
                keys=[self._keys.inputs, self._keys.input_bytes],
                args=[
                    repr(time.time()),
                    DUE_PER_SWEEP,
                    self._keys.job(""),
                    self._keys.tenant_input_bytes(""),
                    LOCAL_TENANT,
                ],
            )
        )
        if pruned:
            log.info("sweeper.inputs_expired", count=pruned)
        return pruned

    async def remove_departed_consumers(self) -> list[str]:
        """Members idle past ``consumer_idle_s`` with nothing pending: pods that went away."""
        removed = []
        for stream, group in self._groups:
            try:
                consumers = await self._redis.xinfo_consumers(stream, group)
            except ResponseError as exc:
                if not str(exc).startswith(("NOGROUP", "no such key")):
                    raise
                continue  # nobody has used this stream yet
            for consumer in consumers:
                if consumer["pending"] == 0 and consumer["idle"] > self._consumer_idle_ms:
                    await self._redis.xgroup_delconsumer(stream, group, consumer["name"])
                    removed.append(consumer["name"])
                    log.info("sweeper.consumer_removed", stream=stream, consumer=consumer["name"])
        return removed

    async def prune_heartbeats(self) -> None:
        beats = await self._redis.hgetall(self._keys.workers)
        now = time.time()
        stale = [
            name
            for name, raw in beats.items()
            if now - WorkerHeartbeat.model_validate_json(raw).ts > HEARTBEAT_PRUNE_S
        ]
        if stale:
            await self._redis.hdel(self._keys.workers, *stale)
