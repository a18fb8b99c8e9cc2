"""Which waiting job a worker takes next: priority classes, fair share, aging.

A submitted job waits in a list of its route, priority class and tenant (``Keys.waiting``); its
spec lives on its record. In front of the consumer group sits the route's short *ready* stream
(``Keys.job_stream``), read by the ``workers`` group exactly as before: claims, XAUTOCLAIM
takeover, dead letters and micro-batching are untouched. One Lua function, ``sched_refill``,
moves jobs from the waiting lists into the ready stream: a worker runs it (``Scheduler.refill``)
before each read, for as many jobs as it is about to read, and a submit runs it for the jobs it
queued, so a worker blocked on an empty stream wakes.

The order, one job at a time:
- the highest class first; a job waiting longer than the aging limit counts as one class higher
  (placed there by its age: it goes before that class's jobs if it is older than their oldest),
  so ``low`` never starves;
- within a class, fair share between tenants by start-time fair queueing: each tenant with jobs
  waiting has a score, the cost served to it so far (``common.cost``, megapixel-steps); the
  lowest goes next and its score grows by the job's cost; a tenant that starts waiting joins at
  the class's clock, the score the last job taken started from (no credit saved up while away,
  and no wait behind the backlog of those already waiting). This is deficit round robin weighted by
  cost without DRR's quantum (no loop over turns that afford nothing): a tenant's backlog delays
  another's next job by about one job;
- within a tenant and class, oldest first.

Entries already moved but not yet read (those beyond the group's last-delivered id) go back to
their lists first, with their charge given back, and the choice is made again: a ``high`` job
submitted after them still goes first. So a job waits at most for the batch a worker renders
and the one it has read ahead.

Every write of a move is a delete before the stream append: a script's first write decides
whether an out-of-memory Redis refuses it, and moving work towards the workers is how memory
comes back.
"""

from __future__ import annotations

from collections.abc import Sequence

from redis.asyncio import Redis

from common.keys import WORKERS_GROUP, Keys
from common.tenants import LOCAL_TENANT

# A job that waited this long is served as if one class higher (DARKROOM_PRIORITY_AGING_S).
DEFAULT_AGING_S = 300.0

# Lua functions for the scripts that queue, move and end jobs (``common.jobs``,
# ``common.batches`` and the refill below). ``p`` is ``Keys.scheduler_prefix``.
SCHEDULER_LUA = """
local SCHED_CLASSES = {'high', 'normal', 'low'}

local function sched_key(p, model, class, suffix)
  return p .. model .. ':' .. class .. ':' .. suffix
end

-- A tenant that starts waiting joins at the class's clock: the score the last job taken
-- started from (start-time fair queueing's virtual time), so it is next or nearly.
local function sched_join(p, model, class, tenant)
  local clock = redis.call('GET', sched_key(p, model, class, 'clock'))
  if not clock then
    clock = redis.call('ZRANGE', sched_key(p, model, class, 'turns'), 0, 0, 'WITHSCORES')[2]
  end
  redis.call('ZADD', sched_key(p, model, class, 'turns'), 'NX', clock or 0, tenant)
end

-- A tenant with nothing left waiting leaves the turns; with nobody left, the clock goes too.
local function sched_leave(p, model, class, tenant)
  local turns = sched_key(p, model, class, 'turns')
  redis.call('ZREM', turns, tenant)
  if redis.call('ZCARD', turns) == 0 then redis.call('DEL', sched_key(p, model, class, 'clock')) end
end

-- Queue a job at the end of its tenant's list; returns the list's key (the record names it).
local function sched_enqueue(p, model, class, tenant, job_id, now)
  local list = sched_key(p, model, class, 'wait:' .. tenant)
  if redis.call('RPUSH', list, job_id) == 1 then sched_join(p, model, class, tenant) end
  redis.call('ZADD', sched_key(p, model, class, 'since'), now, job_id)
  return list
end

-- Take a job out of the waiting structures (its end, or its move to the ready stream).
local function sched_remove(p, model, class, tenant, job_id)
  local list = sched_key(p, model, class, 'wait:' .. tenant)
  redis.call('LREM', list, 1, job_id)
  redis.call('ZREM', sched_key(p, model, class, 'since'), job_id)
  if redis.call('LLEN', list) == 0 then sched_leave(p, model, class, tenant) end
end

local function sched_oldest(p, model, class)
  local oldest = redis.call('ZRANGE', sched_key(p, model, class, 'since'), 0, 0, 'WITHSCORES')
  if oldest[1] then return oldest[1], tonumber(oldest[2]) end
  return nil, nil
end

-- The job to go next and its class; nil when nothing waits.
local function sched_pick(p, model, now, aging_s)
  for i = 1, #SCHED_CLASSES do
    local class = SCHED_CLASSES[i]
    local own_id, own_since = sched_oldest(p, model, class)
    local lower = SCHED_CLASSES[i + 1]
    if lower then
      local aged_id, aged_since = sched_oldest(p, model, lower)
      if aged_id and now - aged_since >= aging_s and (not own_since or aged_since < own_since)
      then
        return aged_id, lower
      end
    end
    if own_id then
      local turns = sched_key(p, model, class, 'turns')
      local tenant = redis.call('ZRANGE', turns, 0, 0)[1]
      if tenant then
        local head = redis.call('LINDEX', sched_key(p, model, class, 'wait:' .. tenant), 0)
        if head then return head, class end
      end
      return own_id, class  -- turns out of step with the lists: the oldest, and they heal
    end
  end
  return nil, nil
end

-- Move one job to the ready stream, charging its tenant's turn; false if its record is gone.
local function sched_take(p, job_prefix, ready, model, class, job_id, local_tenant)
  local job = job_prefix .. job_id
  local rec = redis.call('HMGET', job, 'tenant', 'spec', 'cost', 'status')
  local tenant = rec[1] or local_tenant
  local list = sched_key(p, model, class, 'wait:' .. tenant)
  local turns = sched_key(p, model, class, 'turns')
  redis.call('LREM', list, 1, job_id)
  redis.call('ZREM', sched_key(p, model, class, 'since'), job_id)
  local score = redis.call('ZSCORE', turns, tenant)
  if score then redis.call('SET', sched_key(p, model, class, 'clock'), score) end
  if redis.call('LLEN', list) == 0 then
    sched_leave(p, model, class, tenant)
  elseif score then
    redis.call('ZINCRBY', turns, tonumber(rec[3]) or 0, tenant)
  end
  if not rec[2] or rec[4] ~= 'pending' then return false end
  local entry = redis.call('XADD', ready, '*', 'job', rec[2])
  redis.call('HSET', job, 'entry_id', entry)
  redis.call('HDEL', job, 'queue')
  return true
end

-- Entries of the ready stream no member has read yet.
local function sched_unread(ready, group)
  if redis.call('EXISTS', ready) == 0 then return {} end
  local last = '0-0'
  for _, info in ipairs(redis.call('XINFO', 'GROUPS', ready)) do
    local fields = {}
    for i = 1, #info, 2 do fields[info[i]] = info[i + 1] end
    if fields['name'] == group then last = fields['last-delivered-id'] end
  end
  return redis.call('XRANGE', ready, '(' .. last, '+')
end

-- Unread entries go back to the heads of their lists (the newest first, so each list keeps its
-- order), their charge given back.
local function sched_put_back(p, job_prefix, ready, model, entries)
  for n = #entries, 1, -1 do
    local entry = entries[n]
    local entry_id, fields, spec = entry[1], entry[2], nil
    for i = 1, #fields, 2 do if fields[i] == 'job' then spec = fields[i + 1] end end
    local job_id = spec and cjson.decode(spec).job_id
    local rec = {}
    if job_id then
      rec = redis.call('HMGET', job_prefix .. job_id, 'tenant', 'priority', 'queued_at', 'cost',
        'entry_id', 'status')
    end
    -- Only the scheduler's own live jobs: an entry of a job queued before it stays where it is.
    if rec[2] and rec[5] == entry_id and rec[6] == 'pending' then
      redis.call('XDEL', ready, entry_id)
      local class, tenant = rec[2], rec[1]
      local list = sched_key(p, model, class, 'wait:' .. tenant)
      if redis.call('LPUSH', list, job_id) == 1 then
        sched_join(p, model, class, tenant)
      else
        redis.call('ZINCRBY', sched_key(p, model, class, 'turns'), -(tonumber(rec[4]) or 0),
          tenant)
      end
      redis.call('ZADD', sched_key(p, model, class, 'since'), rec[3], job_id)
      redis.call('HSET', job_prefix .. job_id, 'queue', list)
      redis.call('HDEL', job_prefix .. job_id, 'entry_id')
    end
  end
end

-- Choose again what the ready stream holds unread: ``want`` jobs, best first. Returns how
-- many it holds unread now.
local function sched_refill(p, job_prefix, ready, group, model, want, now, aging_s,
                            local_tenant)
  sched_put_back(p, job_prefix, ready, model, sched_unread(ready, group))
  local moved, tries = 0, 0
  while moved < want and tries < want + 100 do
    tries = tries + 1
    local job_id, class = sched_pick(p, model, now, aging_s)
    if not job_id then break end
    if sched_take(p, job_prefix, ready, model, class, job_id, local_tenant) then
      moved = moved + 1
    end
  end
  return moved
end
"""

# KEYS: the ready streams. ARGV: scheduler prefix, job key prefix, group, now, aging limit,
# the tenant of a record without one, jobs wanted per route, then each route's name.
_REFILL = (
    SCHEDULER_LUA
    + """
local moved = 0
for i, ready in ipairs(KEYS) do
  moved = moved + sched_refill(ARGV[1], ARGV[2], ready, ARGV[3], ARGV[7 + i],
    tonumber(ARGV[7]), tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6])
end
return moved
"""
)


class Scheduler:
    """The worker's side: fill the ready streams it is about to read."""

    def __init__(self, redis: Redis, keys: Keys, *, aging_s: float = DEFAULT_AGING_S) -> None:
        self._keys = keys
        self._aging_s = aging_s
        self._refill = redis.register_script(_REFILL)

    async def refill(self, models: Sequence[str], want: int, *, now: float) -> int:
        """Make each route's ready stream hold its best ``want`` waiting jobs unread; how many
        the streams hold unread now, in all."""
        keys = self._keys
        return int(
            await self._refill(
                keys=[keys.job_stream(model) for model in models],
                args=[
                    keys.scheduler_prefix,
                    keys.job(""),
                    WORKERS_GROUP,
                    repr(now),
                    repr(self._aging_s),
                    LOCAL_TENANT,
                    want,
                    *models,
                ],
            )
        )
