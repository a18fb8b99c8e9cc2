"""How much work waits on each route, and for how long: the backlog that metrics and alerts read.

The one place that knows how waiting work is stored per route (``common.scheduler``): a waiting
job is in its class's ``since`` set (scored by the time it was queued) until the scheduler moves
it to the route's ready stream, where it still waits until a member of the ``workers`` group
reads it. Waiting = the three classes' sets plus the ready stream's unread entries; the oldest is
the earliest queued of them.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

from redis.asyncio import Redis

from common.keys import WORKERS_GROUP, Keys
from common.scheduler import SCHEDULER_LUA

# KEYS: the route's ready stream; ARGV: scheduler prefix, job key prefix, group, route. Returns
# {waiting, the oldest waiting job's queued_at or ''} (seconds, the submitting gateway's clock).
_BACKLOG = (
    SCHEDULER_LUA
    + """
local p, job_prefix, group, model = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local waiting, oldest = 0, nil
for _, class in ipairs(SCHED_CLASSES) do
  local since = sched_key(p, model, class, 'since')
  waiting = waiting + redis.call('ZCARD', since)
  local first = redis.call('ZRANGE', since, 0, 0, 'WITHSCORES')
  if first[2] and (not oldest or tonumber(first[2]) < oldest) then oldest = tonumber(first[2]) end
end
local unread = sched_unread(KEYS[1], group)
waiting = waiting + #unread
for _, entry in ipairs(unread) do
  local fields, spec = entry[2], nil
  for i = 1, #fields, 2 do if fields[i] == 'job' then spec = fields[i + 1] end end
  local job_id = spec and cjson.decode(spec).job_id
  local queued = job_id and tonumber(redis.call('HGET', job_prefix .. job_id, 'queued_at'))
  if queued and (not oldest or queued < oldest) then oldest = queued end
end
return {waiting, oldest and tostring(oldest) or ''}
"""
)


@dataclass(frozen=True)
class Backlog:
    waiting: int  # jobs no worker has taken yet
    oldest_age_s: float  # how long the oldest of them has waited; 0 when none waits


async def route_backlog(redis: Redis, keys: Keys, routes: Iterable[str]) -> dict[str, Backlog]:
    """Each route's waiting jobs and the age of the oldest, in one round trip."""
    names = list(routes)
    script = redis.register_script(_BACKLOG)
    async with redis.pipeline(transaction=False) as pipe:
        for name in names:
            await script(
                keys=[keys.job_stream(name)],
                args=[keys.scheduler_prefix, keys.job(""), WORKERS_GROUP, name],
                client=pipe,
            )
        replies: list[list[int | str | bytes]] = await pipe.execute()
    now = time.time()
    found = {}
    for name, (waiting, oldest) in zip(names, replies, strict=True):
        queued = oldest.decode() if isinstance(oldest, bytes) else str(oldest)
        age_s = max(now - float(queued), 0.0) if int(waiting) > 0 and queued else 0.0
        found[name] = Backlog(waiting=int(waiting), oldest_age_s=age_s)
    return found
