"""The server-side scripts that make each job change one atomic Redis call (``common.jobs``).

``JobStore`` registers these and passes them their keys and arguments; the comment above each
script lists them, in order. ``_EMIT_FUNCTION`` is the shared building block: it defines the Lua
function ``emit``, one job's change (the record, the event log, the pub/sub message, the webhook
stream entry, and, for a terminal change, everything the job held: its queue and scheduler
entries, deadline, input blob, quota counts, usage and batch). ``EMIT_LUA`` calls it for each job
of a call; ``COMPLETE_LUA`` calls it once and, only if it applied, acks the uploader's entry.
``SUBMIT_LUA`` writes a new job. Key names come from ``common.keys``, passed in by the caller.
"""

from __future__ import annotations

from common.scheduler import SCHEDULER_LUA
from common.usage import RECORD_USAGE_LUA

# A batch's item ended (``common.batches``): one fewer unfinished. Until the last ends, the
# batch keeps its ended items readable (they expire with it); the last one starts the batch's
# ``task_ttl_s``, and its items', so a batch and its items expire together, like a job.
BATCH_ITEM_ENDED_LUA = """
local function batch_item_ended(batch_id, job, log, ttl_s, batch_prefix, items_prefix,
                                job_prefix, log_prefix)
  local batch, items = batch_prefix .. batch_id, items_prefix .. batch_id
  if redis.call('EXISTS', batch) == 0 then return end
  if redis.call('HINCRBY', batch, 'unfinished', -1) > 0 then
    local left = redis.call('TTL', batch)
    if left > 0 then
      redis.call('EXPIRE', job, left)
      redis.call('EXPIRE', log, left)
    end
    return
  end
  redis.call('EXPIRE', batch, ttl_s)
  redis.call('EXPIRE', items, ttl_s)
  for _, id in ipairs(redis.call('LRANGE', items, 0, -1)) do
    redis.call('EXPIRE', job_prefix .. id, ttl_s)
    redis.call('EXPIRE', log_prefix .. id, ttl_s)
  end
end
"""

# KEYS: webhook events, deadlines, inputs, input bytes; then per job: its record, its event log,
# its input blob. ARGV: now, terminal TTL, event log maxlen, webhook progress interval, ready
# stream prefix, workers group, tenant jobs and input bytes prefixes, the tenant of a record
# without one, usage prefix, day and TTL, batch, batch items, job and event log prefixes,
# scheduler prefix, backlog prefix, webhook stream cap; then per job: its patch (JSON) and its
# pub/sub channel. Returns each job's event ('' if unknown or already terminal).
_EMIT_FUNCTION = (
    RECORD_USAGE_LUA
    + BATCH_ITEM_ENDED_LUA
    + SCHEDULER_LUA
    + """
local webhook_stream, deadlines, inputs, input_bytes = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local now, ttl_s = ARGV[1], tonumber(ARGV[2])
local log_maxlen, progress_interval_s = ARGV[3], tonumber(ARGV[4])
local stream_prefix, group = ARGV[5], ARGV[6]
local tenant_jobs_prefix, tenant_bytes_prefix, local_tenant = ARGV[7], ARGV[8], ARGV[9]
local usage_prefix, usage_day, usage_ttl_s = ARGV[10], ARGV[11], ARGV[12]
local sched_prefix, backlog_prefix = ARGV[17], ARGV[18]

local function emit(job, log, input_blob, patch, channel)
  local cur = redis.call('HMGET', job, 'job_id', 'status', 'progress', 'message', 'result_urls',
    'error', 'model', 'entry_id', 'input_bytes')
  if not cur[1] then return false end
  local status = cur[2]
  if status == 'completed' or status == 'failed' or status == 'canceled' then return false end
  local previous = status

  local progress = tonumber(cur[3]) or 0
  if patch.progress and patch.progress > progress then progress = patch.progress end
  if patch.status then status = patch.status end
  local message = patch.message or cur[4] or ''
  local result_urls = patch.result_urls or cur[5]
  local err = patch.error or cur[6]
  local seq = redis.call('HINCRBY', job, 'seq', 1)

  redis.call('HSET', job,
    'status', status, 'progress', progress, 'message', message, 'updated_at', now)
  if patch.result_urls then redis.call('HSET', job, 'result_urls', patch.result_urls) end
  if patch.error then redis.call('HSET', job, 'error', patch.error) end
  if patch.fields then
    for k, v in pairs(patch.fields) do redis.call('HSET', job, k, v) end
  end

  local event = {seq = seq, job_id = cur[1], status = status, progress = progress,
                 message = message, ts = tonumber(now)}
  if result_urls and result_urls ~= '[]' then event.result_urls = cjson.decode(result_urls) end
  if err then event.error = err end
  local payload = cjson.encode(event)

  redis.call('XADD', log, 'MAXLEN', '~', log_maxlen, seq .. '-0', 'event', payload)
  if status == 'completed' or status == 'failed' or status == 'canceled' then
    redis.call('EXPIRE', job, ttl_s)
    redis.call('EXPIRE', log, ttl_s)
    -- Nothing of a finished job waits anywhere: its queue entry (a worker holding it finds its
    -- claim gone and hands nothing on), its deadline, its input bytes.
    if cur[7] and cur[8] then
      local stream = stream_prefix .. cur[7]
      redis.call('XACK', stream, group, cur[8])
      redis.call('XDEL', stream, cur[8])
    end
    redis.call('ZREM', deadlines, cur[1])
    -- Nor in the scheduler's waiting lists, nor in the route's backlog.
    local sched = redis.call('HMGET', job, 'queue', 'priority', 'tenant', 'backlog_id')
    if sched[1] and cur[7] then
      sched_remove(sched_prefix, cur[7], sched[2], sched[3] or local_tenant, cur[1])
      redis.call('HDEL', job, 'queue')
    end
    if sched[4] and cur[7] then redis.call('XDEL', backlog_prefix .. cur[7], sched[4]) end
    -- Nor does it count against its tenant's quotas: jobs at once, input bytes waiting.
    local tenant = redis.call('HGET', job, 'tenant') or local_tenant
    local tenant_bytes = tenant_bytes_prefix .. tenant
    redis.call('ZREM', tenant_jobs_prefix .. tenant, cur[1])
    if cur[9] then
      redis.call('DEL', input_blob)
      if redis.call('ZREM', inputs, cur[1] .. ':' .. cur[9]) == 1 then
        redis.call('DECRBY', input_bytes, cur[9])
        if redis.call('DECRBY', tenant_bytes, cur[9]) <= 0 then redis.call('DEL', tenant_bytes) end
      end
    end
    record_usage(job, status, usage_prefix, usage_day, usage_ttl_s)
    local batch = redis.call('HGET', job, 'batch')
    if batch then batch_item_ended(batch, job, log, ttl_s, ARGV[13], ARGV[14], ARGV[15],
      ARGV[16]) end
  end
  -- A job that asked for a webhook puts the kinds of event it asked for on the notifier's stream.
  local hook = redis.call('HMGET', job, 'webhook', 'webhook_events', 'webhook_progress_at',
    'tenant', 'api', 'params')
  if hook[1] then
    local kind, event_type = nil, nil
    if status == 'completed' or status == 'failed' or status == 'canceled' then
      kind, event_type = 'completed', 'job.' .. status
    elseif status == 'processing' and previous == 'pending' then
      kind, event_type = 'start', 'job.started'
    elseif status == 'processing'
      and tonumber(now) - (tonumber(hook[3]) or 0) >= progress_interval_s then
      kind, event_type = 'progress', 'job.progress'
    end
    if kind and string.find(',' .. hook[2] .. ',', ',' .. kind .. ',', 1, true) then
      if kind ~= 'completed' then redis.call('HSET', job, 'webhook_progress_at', now) end
      -- Capped (ARGV[19]): with no notifier reading it, it must not fill Redis.
      redis.call('XADD', webhook_stream, 'MAXLEN', '~', ARGV[19], '*', 'job_id', cur[1], 'seq', seq,
        'type', event_type, 'url', hook[1], 'tenant', hook[4] or '', 'api', hook[5] or 'api',
        'params', hook[6] or '{}', 'event', payload)
    end
  end
  redis.call('PUBLISH', channel, payload)
  return payload
end
"""
)
# KEYS: the four above, then each job's record, event log and input blob; ARGV: the 19 above,
# then each job's patch (JSON) and progress channel. Returns each job's event ('': not applied).
EMIT_LUA = (
    _EMIT_FUNCTION
    + """
-- Each job's change on its own: one that is unknown or terminal is skipped ('').
local out = {}
for i = 0, (#KEYS - 4) / 3 - 1 do
  local payload = emit(KEYS[5 + 3 * i], KEYS[6 + 3 * i], KEYS[7 + 3 * i],
    cjson.decode(ARGV[20 + 2 * i]), ARGV[21 + 2 * i])
  out[i + 1] = payload or ''
end
return out
"""
)

# The uploader's completion (``JobStore.complete``): one job's change as above and, only if it
# was made, the ack of the ``rendered`` entry and the removal of the job's blobs, in one atomic
# step and one round trip. KEYS: emit's four, the job's three, the rendered stream, then the blob
# keys; ARGV: emit's 19, the patch, the channel, the group, the entry id.
COMPLETE_LUA = (
    _EMIT_FUNCTION
    + """
if emit(KEYS[5], KEYS[6], KEYS[7], cjson.decode(ARGV[20]), ARGV[21]) then
  redis.call('XACK', KEYS[8], ARGV[22], ARGV[23])
  redis.call('XDEL', KEYS[8], ARGV[23])
  for i = 9, #KEYS do redis.call('DEL', KEYS[i]) end
  return 1
end
return 0
"""
)

# KEYS: ready stream, job, job events, input blob, deadlines, inputs, input bytes, claimed key
# ('' if none), tenant's jobs, tenant's input bytes, the rendered stream, the route's backlog.
# ARGV: max queue (0: none), has blob, has claim, unfinished TTL, event log maxlen, first event,
# spec, blob bytes, blob TTL, claim held, claim final, claim TTL, deadline ('' if none), max input
# bytes (0: none), now, job id, tenant's max queued (0: none), tenant's max input bytes (0: none),
# the ``rendered`` entry of a job already rendered ('' for a job to render), scheduler prefix,
# job key prefix, workers group, the tenant of a record without one, route, tenant, priority
# class, aging limit (s); then the record's fields.
SUBMIT_LUA = (
    SCHEDULER_LUA
    + """
local stream, job, log, blob = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local deadlines, inputs, input_bytes, claim = KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local tenant_jobs, tenant_bytes, rendered, backlog = KEYS[9], KEYS[10], KEYS[11], KEYS[12]
local max_queue, has_blob, has_claim = tonumber(ARGV[1]), ARGV[2] == '1', ARGV[3] == '1'
local deadline, max_input_bytes, now = ARGV[13], tonumber(ARGV[14]), tonumber(ARGV[15])
local job_id, size = ARGV[16], string.len(ARGV[8])
local max_queued, tenant_max_input_bytes = tonumber(ARGV[17]), tonumber(ARGV[18])
local sched_prefix, job_prefix, group, local_tenant = ARGV[20], ARGV[21], ARGV[22], ARGV[23]
local model, tenant, priority, aging_s = ARGV[24], ARGV[25], ARGV[26], tonumber(ARGV[27])
-- The tenant's own limits first: a tenant at its limit is told so, not that the route is full.
-- A job whose record expired unfinished no longer counts (it can never reach a terminal state).
-- Only reads until the job's first write: a script's first write decides whether a Redis out of
-- memory refuses it, and a delete (which any full Redis allows) would let all the rest through.
local live_since = now - tonumber(ARGV[4])
if max_queued > 0 then
  local active = redis.call('ZCOUNT', tenant_jobs, '(' .. live_since, '+inf')
  if active >= max_queued then return {'tenant_queue_full', active} end
end
if has_blob and tenant_max_input_bytes > 0 then
  local waiting = tonumber(redis.call('GET', tenant_bytes) or '0')
  if waiting + size > tenant_max_input_bytes then return {'tenant_inputs_full', waiting} end
end
if max_queue > 0 then
  -- The backlog: the route's jobs waiting, in the ready stream or rendering.
  local depth = redis.call('XLEN', backlog)
  if depth >= max_queue then return {'queue_full', depth} end
end
if has_blob and max_input_bytes > 0 then
  local waiting = tonumber(redis.call('GET', input_bytes) or '0')
  if waiting + size > max_input_bytes then return {'inputs_full', waiting} end
end
if has_claim and redis.call('GET', claim) ~= ARGV[10] then return {'claim_expired', 0} end
redis.call('HSET', job, unpack(ARGV, 28))
redis.call('ZREMRANGEBYSCORE', tenant_jobs, '-inf', live_since)
if has_blob then
  redis.call('SET', blob, ARGV[8], 'EX', ARGV[9])
  redis.call('HSET', job, 'input_bytes', size)
  redis.call('ZADD', inputs, now + tonumber(ARGV[9]), job_id .. ':' .. size)
  redis.call('INCRBY', input_bytes, size)
  redis.call('INCRBY', tenant_bytes, size)
end
redis.call('XADD', log, 'MAXLEN', '~', ARGV[5], '1-0', 'event', ARGV[6])
redis.call('EXPIRE', job, ARGV[4])
redis.call('EXPIRE', log, ARGV[4])
if ARGV[19] ~= '' then
  -- Already rendered (a result-cache hit): straight to the uploader; no queue entry to clear.
  redis.call('XADD', rendered, '*', 'rendered', ARGV[19])
else
  -- Into its waiting list; then the ready stream is chosen again, so an idle worker wakes.
  local list = sched_enqueue(sched_prefix, model, priority, tenant, job_id, now)
  local entry = redis.call('XADD', backlog, '*', 'job_id', job_id)
  redis.call('HSET', job, 'queue', list, 'queued_at', ARGV[15], 'backlog_id', entry)
  sched_refill(sched_prefix, job_prefix, stream, group, model, 1, now, aging_s, local_tenant)
end
redis.call('ZADD', tenant_jobs, now, job_id)
redis.call('EXPIRE', tenant_jobs, ARGV[4])
if deadline ~= '' then redis.call('ZADD', deadlines, deadline, job_id) end
if has_claim then redis.call('SET', claim, ARGV[11], 'EX', ARGV[12]) end
return {'ok', 0}
"""
)
