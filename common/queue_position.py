"""Where a waiting job stands in its route's queue, and about when it will be done.

Computed when asked, never stored: nothing is written per waiting job. Today each route is one
FIFO stream read by the ``workers`` group, so the jobs ahead of a job are the entries between
the group's last-delivered id and the job's own entry (acked entries are deleted, canceled ones
too). A scheduler with priority classes and fair share replaces ``jobs_ahead``; the rest stays.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from redis.asyncio import Redis

from common.keys import WORKERS_GROUP, Keys
from common.schemas import JobRecord, JobStatus, WorkerHeartbeat

# Counting stops here: one read walks at most this many entries inside Redis (a job 10,000
# back costs what a job 1,000 back does), and beyond it the exact number helps nobody.
MAX_COUNTED = 1000

# KEYS: the route's stream; ARGV: group, the job's entry id, the counting cap. Returns the
# entries waiting undelivered before the job, or -1 if the job's entry is gone or delivered.
_JOBS_AHEAD = """
local stream, group, entry, cap = KEYS[1], ARGV[1], ARGV[2], tonumber(ARGV[3])
if redis.call('EXISTS', stream) == 0 then return -1 end
if #redis.call('XRANGE', stream, entry, entry) == 0 then return -1 end
local last = '0-0'  -- no group yet: no worker has read anything
for _, info in ipairs(redis.call('XINFO', 'GROUPS', stream)) do
  local fields = {}
  for i = 1, #info, 2 do fields[info[i]] = info[i + 1] end
  if fields['name'] == group then last = fields['last-delivered-id'] end
end
local function parts(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local last_ms, last_seq = parts(last)
local ms, seq = parts(entry)
if ms < last_ms or (ms == last_ms and seq <= last_seq) then return -1 end
return #redis.call('XRANGE', stream, '(' .. last, '(' .. entry, 'COUNT', cap)
"""


@dataclass(frozen=True)
class QueuePosition:
    ahead: int  # jobs that start before this one; 0: it is next
    eta_s: float | None  # about when its render is done; None without render times
    capped: bool = False  # counting stopped at MAX_COUNTED: at least ``ahead``

    def describe(self) -> str:
        """Seed 1's ``message`` while the job waits."""
        ahead = f"{self.ahead}+" if self.capped else str(self.ahead)
        if self.eta_s is None:
            return f"Queued: {ahead} ahead"
        return f"Queued: {ahead} ahead, about {math.ceil(self.eta_s)} s"


async def jobs_ahead(redis: Redis, keys: Keys, job: JobRecord) -> int | None:
    """How many jobs start before ``job`` on its route; None unless it waits undelivered
    (a worker read it, it ended, or it never queued). At most ``MAX_COUNTED``."""
    if job.status is not JobStatus.PENDING or job.entry_id is None:
        return None
    script = redis.register_script(_JOBS_AHEAD)
    ahead = int(
        await script(
            keys=[keys.job_stream(job.model)], args=[WORKERS_GROUP, job.entry_id, MAX_COUNTED]
        )
    )
    return None if ahead < 0 else ahead


def eta_s(ahead: int, route: str, workers: Iterable[WorkerHeartbeat]) -> float | None:
    """Seconds until a job with ``ahead`` jobs before it is rendered: those jobs and itself at
    the route's throughput, summed over the live workers that rendered it lately (each one's
    batch size over its call time). A worker serving several routes counts fully for each."""
    jobs_per_s = sum(
        timing.batch_size / timing.render_s
        for beat in workers
        if (timing := beat.render_times.get(route)) is not None and timing.render_s > 0
    )
    if jobs_per_s <= 0:
        return None
    return round((ahead + 1) / jobs_per_s, 1)


async def position(
    redis: Redis,
    keys: Keys,
    job: JobRecord,
    workers: Callable[[], Awaitable[Iterable[WorkerHeartbeat]]],
) -> QueuePosition | None:
    """``job``'s place and ETA while it waits; None once a worker has it or it ended.
    ``workers`` reads the live workers' heartbeats, only for a job that waits."""
    ahead = await jobs_ahead(redis, keys, job)
    if ahead is None:
        return None
    return QueuePosition(
        ahead=ahead, eta_s=eta_s(ahead, job.model, await workers()), capped=ahead >= MAX_COUNTED
    )
