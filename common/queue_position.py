"""Where a waiting job stands in its route's queue, and about when it will be done.

Computed when asked, never stored: nothing is written per waiting job. A job waits in its
scheduler list (``common.scheduler``) or, moved, unread in the route's ready stream. Ahead of a
job in the ready stream: the unread entries before it. Ahead of a job in a waiting list: the
ready stream's unread entries, every job of the classes above, the jobs of the class below old
enough to be promoted past it, and under fair share, from each tenant waiting in its class, as
many jobs as stand before it in its own list (one more for a tenant served less so far). An
estimate: a ``high`` job submitted later still goes first. Bounded work: counting stops at
``MAX_COUNTED`` and looks at most at ``MAX_TENANTS_COUNTED`` tenants.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.typing import EncodableT

from common.keys import WORKERS_GROUP, Keys
from common.scheduler import DEFAULT_AGING_S, SCHEDULER_LUA
from common.schemas import JobRecord, JobStatus, WorkerHeartbeat

# Counting stops here: one read walks at most this many entries inside Redis (a job 10,000
# back costs what a job 1,000 back does), and beyond it the exact number helps nobody.
MAX_COUNTED = 1000
MAX_TENANTS_COUNTED = 100

# KEYS: the route's ready stream; ARGV: group, the job's entry id, the counting cap. Returns the
# entries waiting undelivered before the job, or -1 if the job's entry is gone or delivered.
_JOBS_AHEAD_READY = """
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

# KEYS: the route's ready stream; ARGV: group, scheduler prefix, route, class, tenant, job id,
# now, aging limit, counting cap, tenants cap. Returns the jobs that go before it, or -1 if it
# no longer waits in its list. Reads only.
_JOBS_AHEAD_WAITING = (
    SCHEDULER_LUA
    + """
local ready, group, p, model = KEYS[1], ARGV[1], ARGV[2], ARGV[3]
local class, tenant, job_id = ARGV[4], ARGV[5], ARGV[6]
local now, aging_s = tonumber(ARGV[7]), tonumber(ARGV[8])
local cap, tenants_cap = tonumber(ARGV[9]), tonumber(ARGV[10])
local mine = sched_key(p, model, class, 'wait:' .. tenant)
local k = redis.call('LPOS', mine, job_id, 'MAXLEN', cap)
if not k then
  if redis.call('LLEN', mine) <= cap then return -1 end
  return cap  -- somewhere past the counting cap
end
local since = redis.call('ZSCORE', sched_key(p, model, class, 'since'), job_id)
local ahead = #sched_unread(ready, group) + k
for i, c in ipairs(SCHED_CLASSES) do
  if c == class then
    local lower = SCHED_CLASSES[i + 1]
    if lower and since then
      local limit = math.min(now - aging_s, tonumber(since))
      ahead = ahead + redis.call('ZCOUNT', sched_key(p, model, lower, 'since'), '-inf', limit)
    end
    break
  end
  ahead = ahead + redis.call('ZCARD', sched_key(p, model, c, 'since'))
  if ahead >= cap then return cap end
end
local turns = sched_key(p, model, class, 'turns')
local my_score = tonumber(redis.call('ZSCORE', turns, tenant) or '0')
local others = redis.call('ZRANGE', turns, 0, tenants_cap - 1, 'WITHSCORES')
for i = 1, #others, 2 do
  local other = others[i]
  if other ~= tenant then
    local turns_before = k
    if tonumber(others[i + 1]) <= my_score then turns_before = k + 1 end
    local waiting = redis.call('LLEN', sched_key(p, model, class, 'wait:' .. other))
    ahead = ahead + math.min(waiting, turns_before)
    if ahead >= cap then return cap end
  end
end
return math.min(ahead, cap)
"""
)


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


async def jobs_ahead(
    redis: Redis, keys: Keys, job: JobRecord, *, aging_s: float = DEFAULT_AGING_S
) -> int | None:
    """About how many jobs start before ``job`` on its route; None unless it waits (a worker
    read it, it ended, or it never queued). At most ``MAX_COUNTED``."""
    if job.status is not JobStatus.PENDING:
        return None
    if job.queue is not None:
        script = redis.register_script(_JOBS_AHEAD_WAITING)
        args: list[EncodableT] = [
            WORKERS_GROUP,
            keys.scheduler_prefix,
            job.model,
            job.priority,
            job.tenant,
            job.job_id,
            repr(time.time()),
            repr(aging_s),
            MAX_COUNTED,
            MAX_TENANTS_COUNTED,
        ]
    elif job.entry_id is not None:
        script = redis.register_script(_JOBS_AHEAD_READY)
        args = [WORKERS_GROUP, job.entry_id, MAX_COUNTED]
    else:
        return None
    ahead = int(await script(keys=[keys.job_stream(job.model)], args=args))
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
    *,
    aging_s: float = DEFAULT_AGING_S,
) -> QueuePosition | None:
    """``job``'s place and ETA while it waits; None once a worker has it or it ended.
    ``workers`` reads the live workers' heartbeats, only for a job that waits."""
    ahead = await jobs_ahead(redis, keys, job, aging_s=aging_s)
    if ahead is None:
        return None
    return QueuePosition(
        ahead=ahead, eta_s=eta_s(ahead, job.model, await workers()), capped=ahead >= MAX_COUNTED
    )
