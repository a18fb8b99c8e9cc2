"""How much work waits on each route, and for how long: the backlog that metrics and alerts read.

The one place that knows how waiting work is stored per route. Today each route is one FIFO
stream read by the ``workers`` group: entries after the group's last-delivered id wait for a
worker; delivered ones are pending until acked, and acked or canceled entries are deleted, so
waiting = length - pending. A scheduler that stores waiting work differently re-points
:func:`route_backlog` and nothing else.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from redis.asyncio import Redis

from common.keys import WORKERS_GROUP, Keys

# KEYS: the route's stream; ARGV: group. Returns {waiting, oldest waiting entry's id or '',
# Redis's clock in ms}: the age is measured on the clock that stamped the entry ids.
_BACKLOG = """
local stream, group = KEYS[1], ARGV[1]
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
if redis.call('EXISTS', stream) == 0 then return {0, '', now_ms} end
local length = redis.call('XLEN', stream)
local last, pending = nil, 0  -- no group yet: no worker has read anything
for _, info in ipairs(redis.call('XINFO', 'GROUPS', stream)) do
  local fields = {}
  for i = 1, #info, 2 do fields[info[i]] = info[i + 1] end
  if fields['name'] == group then
    last, pending = fields['last-delivered-id'], fields['pending']
  end
end
local first
if last == nil then
  first = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)
else
  first = redis.call('XRANGE', stream, '(' .. last, '+', 'COUNT', 1)
end
local oldest = ''
if #first > 0 then oldest = first[1][1] end
return {math.max(length - pending, 0), oldest, now_ms}
"""


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
            await script(keys=[keys.job_stream(name)], args=[WORKERS_GROUP], client=pipe)
        replies: list[list[int | str | bytes]] = await pipe.execute()
    found = {}
    for name, (waiting, oldest, now_ms) in zip(names, replies, strict=True):
        age_s = 0.0
        oldest_id = oldest.decode() if isinstance(oldest, bytes) else str(oldest)
        if int(waiting) > 0 and oldest_id:
            age_s = max(int(now_ms) - int(oldest_id.split("-")[0]), 0) / 1000
        found[name] = Backlog(waiting=int(waiting), oldest_age_s=age_s)
    return found
