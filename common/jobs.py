"""The job record and its event log: every state change of a job goes through ``JobStore``.

A change is one Lua call, so the record, the per-job event log, the live pub/sub message and the
terminal-event stream always agree: sequence numbers are strict, progress never goes backwards,
and nothing changes a job once it is terminal (a late or stale writer is simply ignored).

The change that ends a job also clears what it left waiting: its ready-stream entry, its deadline
and its input image (and that image's share of the input-bytes caps), and it stops counting against
its tenant's ``max_queued``, its place in the scheduler's waiting list and its entry in the
route's backlog; so Redis holds nothing of a finished job but its record and event
log, which expire, and no quota can leak. And it adds the job to its tenant's usage
(``common.usage``): once, since a job ends once.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from redis.asyncio import Redis
from redis.typing import EncodableT, FieldT, KeyT

from common.cost import job_cost
from common.keys import WORKERS_GROUP, Keys
from common.scheduler import DEFAULT_AGING_S, SCHEDULER_LUA
from common.schemas import (
    JobEvent,
    JobRecord,
    JobSpec,
    JobStatus,
    RenderedJob,
    RenderParams,
    SeedApi,
    Task,
    Webhook,
)
from common.tenants import LOCAL_TENANT, PRIORITIES, Priority
from common.usage import RECORD_USAGE_LUA, SECONDS_PER_DAY, USAGE_RETENTION_DAYS, usage_day

# Enough for every step of a long render plus the status changes around it.
JOB_EVENT_LOG_MAXLEN = 500
# The webhook events stream holds only unread work while a notifier reads it; with none (not
# deployed, or down for long) it would grow without end. Past this many waiting (about 50 MB) the
# oldest are trimmed: far more than a live notifier ever lags, far less than fills Redis.
WEBHOOK_EVENTS_MAXLEN = 100_000
# A job's webhook hears of its progress at most this often (its start and end always).
WEBHOOK_PROGRESS_INTERVAL_S = 2.0
# The error of a job that passed its ``Cancel-After`` deadline, wherever it was.
DEADLINE_EXCEEDED = "deadline exceeded"
# Even a job that never finishes (say, its queue was deleted by hand) leaves Redis eventually.
UNFINISHED_TTL_S = 7 * 24 * 3600

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
_EMIT = (
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
_COMPLETE = (
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
_SUBMIT = (
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


class QueueFull(Exception):
    def __init__(self, depth: int) -> None:
        super().__init__(f"{depth} jobs queued")
        self.depth = depth


@dataclass(frozen=True)
class TenantQuota:
    """The submitting tenant's own limits, checked in the submit's transaction; ``None``: none."""

    max_queued: int | None = None
    max_input_bytes: int | None = None


class TenantQueueFull(Exception):
    """The tenant already has ``max_queued`` jobs queued or running: nothing was written."""

    def __init__(self, active: int) -> None:
        super().__init__(f"{active} jobs queued or running")
        self.active = active


class TenantInputsFull(Exception):
    """The tenant's input images waiting in Redis take its share of the cap: nothing was
    written."""

    def __init__(self, waiting_bytes: int) -> None:
        super().__init__(f"{waiting_bytes} bytes of the tenant's inputs waiting")
        self.waiting_bytes = waiting_bytes


class InputsFull(Exception):
    """The input images waiting in Redis already take their cap: nothing was written."""

    def __init__(self, waiting_bytes: int) -> None:
        super().__init__(f"{waiting_bytes} bytes of inputs waiting")
        self.waiting_bytes = waiting_bytes


@dataclass(frozen=True)
class KeyClaim:
    """A key the submit holds (an ``Idempotency-Key`` record): the job is written only while the
    key still reads ``held``, and the key becomes ``final`` in the same transaction."""

    key: str
    held: str
    final: str
    ttl_s: int


class ClaimExpired(Exception):
    """The submit's ``KeyClaim`` no longer holds: nothing was written."""


def first_event(spec: JobSpec, message: str, now: float) -> JobEvent:
    """A new job's first event (``seq`` 1, pending): its log's first entry."""
    return JobEvent(
        seq=1, job_id=spec.job_id, status=JobStatus.PENDING, progress=0, message=message, ts=now
    )


def record_fields(
    spec: JobSpec,
    message: str,
    now: float,
    *,
    webhook: Webhook | None = None,
    api: SeedApi = "api",
) -> dict[FieldT, EncodableT]:
    """A new job's record, as the submit scripts write it (one job, or a batch's items)."""
    record: dict[FieldT, EncodableT] = {
        "job_id": spec.job_id,
        "status": JobStatus.PENDING.value,
        "progress": 0,
        "message": message,
        "model": spec.model,
        "task": spec.task.value,
        "params": spec.params.model_dump_json(),
        "seq": 1,
        "attempts": 0,
        "created_at": spec.created_at.isoformat(),
        "updated_at": now,
        "tenant": spec.tenant,
        "api": api,
        "cost": job_cost(spec.params, spec.task),
        # What the scheduler moves to the ready stream (``common.scheduler``).
        "priority": spec.priority,
        "spec": spec.model_dump_json(),
    }
    if webhook is not None:
        record["webhook"] = webhook.url
        record["webhook_events"] = ",".join(webhook.events)
    return record


@dataclass(frozen=True)
class JobChange:
    """One change of a job for ``JobStore.emit_all``; a field left ``None`` keeps its value."""

    job_id: str
    status: JobStatus | None = None
    progress: int | None = None
    message: str | None = None
    result_urls: list[str] | None = None
    error: str | None = None
    fields: dict[str, str | int | float] | None = None

    def patch(self) -> str:
        """The change as the emit script reads it (JSON)."""
        patch: dict[str, Any] = {}
        if self.status is not None:
            patch["status"] = self.status.value
        if self.progress is not None:
            patch["progress"] = max(0, min(100, self.progress))
        if self.message is not None:
            patch["message"] = self.message
        if self.result_urls is not None:
            patch["result_urls"] = json.dumps(self.result_urls)
        if self.error is not None:
            patch["error"] = self.error
        if self.fields:
            patch["fields"] = {k: str(v) for k, v in self.fields.items()}
        return json.dumps(patch)


class JobStore:
    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        *,
        task_ttl_s: int,
        usage_retention_days: int = USAGE_RETENTION_DAYS,
        priority_aging_s: float = DEFAULT_AGING_S,
        webhook_events_maxlen: int = WEBHOOK_EVENTS_MAXLEN,
    ) -> None:
        self._redis = redis
        self._priority_aging_s = priority_aging_s
        self._keys = keys
        self._task_ttl_s = task_ttl_s
        self._webhook_events_maxlen = webhook_events_maxlen
        self._usage_retention_s = usage_retention_days * SECONDS_PER_DAY
        self._emit = redis.register_script(_EMIT)
        self._complete = redis.register_script(_COMPLETE)
        self._submit = redis.register_script(_SUBMIT)

    async def submit(
        self,
        spec: JobSpec,
        *,
        message: str,
        input_bytes: bytes | None = None,
        blob_ttl_s: int = 3600,
        max_queue: int | None = None,
        max_input_bytes: int | None = None,
        claim: KeyClaim | None = None,
        webhook: Webhook | None = None,
        api: SeedApi = "api",
        quota: TenantQuota | None = None,
        rendered: RenderedJob | None = None,
    ) -> None:
        """Write the record and its first event, and queue the job in its waiting list
        (``common.scheduler``), in one transaction; with ``max_queue``, only while the route's
        backlog (jobs waiting or in flight) is shorter (else ``QueueFull``);
        with ``max_input_bytes``, only while the input bytes waiting in Redis stay within it
        (else ``InputsFull``); with ``quota``, only while the tenant has fewer than its
        ``max_queued`` jobs unfinished (else ``TenantQueueFull``) and its input bytes stay within
        its ``max_input_bytes`` (else ``TenantInputsFull``); with ``claim``, only while the claim
        holds (else ``ClaimExpired``), finalising it too. With ``rendered`` (a result-cache
        hit: nothing to render) the entry goes to the uploader's ``rendered`` stream instead of
        the route's queue, whatever its length, and the job costs nothing. A deadline is
        registered for the sweeper. The job counts as the tenant's until it ends (``emit``'s
        terminal change). One script: the checks and the writes are one atomic step and one
        round trip."""
        keys, now = self._keys, time.time()
        first = first_event(spec, message, now)
        record = record_fields(spec, message, now, webhook=webhook, api=api)
        if rendered is not None:
            record["cost"] = 0  # a result-cache hit renders nothing
        blob = input_bytes is not None and spec.input_blob is not None
        script_keys = [
            keys.job_stream(spec.model),
            keys.job(spec.job_id),
            keys.job_events(spec.job_id),
            keys.input_blob(spec.job_id),
            keys.deadlines,
            keys.inputs,
            keys.input_bytes,
            claim.key if claim is not None else "",
            keys.tenant_jobs(spec.tenant),
            keys.tenant_input_bytes(spec.tenant),
            keys.rendered,
            keys.backlog(spec.model),
        ]
        args: list[EncodableT] = [
            # A job already rendered waits for no GPU: a full queue does not turn it away.
            (max_queue or 0) if rendered is None else 0,
            int(blob),
            int(claim is not None),
            UNFINISHED_TTL_S,
            JOB_EVENT_LOG_MAXLEN,
            first.model_dump_json(),
            spec.model_dump_json(),
            input_bytes if blob and input_bytes is not None else b"",
            blob_ttl_s,
            claim.held if claim else "",
            claim.final if claim else "",
            claim.ttl_s if claim else 0,
            repr(spec.deadline_at) if spec.deadline_at is not None else "",
            max_input_bytes or 0,
            repr(now),
            spec.job_id,
            (quota.max_queued or 0) if quota else 0,
            (quota.max_input_bytes or 0) if quota else 0,
            rendered.model_dump_json() if rendered is not None else "",
            keys.scheduler_prefix,
            keys.job(""),
            WORKERS_GROUP,
            LOCAL_TENANT,
            spec.model,
            spec.tenant,
            spec.priority,
            repr(self._priority_aging_s),
        ]
        args += [item for pair in record.items() for item in pair]
        outcome, depth = await self._submit(keys=script_keys, args=args)
        if outcome == "queue_full":
            raise QueueFull(int(depth))
        if outcome == "inputs_full":
            raise InputsFull(int(depth))
        if outcome == "tenant_queue_full":
            raise TenantQueueFull(int(depth))
        if outcome == "tenant_inputs_full":
            raise TenantInputsFull(int(depth))
        if outcome == "claim_expired":
            raise ClaimExpired(claim.key if claim else "")

    async def emit(
        self,
        job_id: str,
        *,
        status: JobStatus | None = None,
        progress: int | None = None,
        message: str | None = None,
        result_urls: list[str] | None = None,
        error: str | None = None,
        fields: dict[str, str | int | float] | None = None,
    ) -> JobEvent | None:
        """Apply a change and publish it; ``None`` when the job is unknown or already terminal."""
        change = JobChange(job_id, status, progress, message, result_urls, error, fields)
        (payload,) = await self._apply([change])
        return JobEvent.model_validate_json(payload) if payload else None

    async def emit_all(self, changes: Sequence[JobChange]) -> list[bool]:
        """Apply each change and publish it, as ``emit`` does, all in one round trip (a batch's
        progress); for each, whether it applied (``False``: unknown or already terminal)."""
        if not changes:
            return []
        return [bool(payload) for payload in await self._apply(changes)]

    async def complete(
        self,
        job_id: str,
        *,
        message: str,
        result_urls: list[str],
        fields: dict[str, str | int | float],
        ack: tuple[str, str, str],
        blobs: list[str],
    ) -> bool:
        """The uploader's last step: mark the job completed (as ``emit`` does) and, only if that
        changed it, ack the ``rendered`` entry (``ack``: stream, group, entry id) and delete its
        ``blobs``, atomically. ``False`` when the job was unknown or already terminal: nothing
        was changed, the entry is still pending."""
        change = JobChange(job_id, JobStatus.COMPLETED, 100, message, result_urls, None, fields)
        keys, args = self._emit_call([change])
        stream, group, msg_id = ack
        done = await self._complete(keys=[*keys, stream, *blobs], args=[*args, group, msg_id])
        return bool(done)

    async def _apply(self, changes: Sequence[JobChange]) -> list[str]:
        script_keys, args = self._emit_call(changes)
        payloads: list[str | bytes] = await self._emit(keys=script_keys, args=args)
        return [_text(payload) for payload in payloads]

    def _emit_call(self, changes: Sequence[JobChange]) -> tuple[list[KeyT], list[EncodableT]]:
        """The keys and arguments of the emit script (and of the completion built on it)."""
        keys, now = self._keys, time.time()
        script_keys: list[KeyT] = [
            keys.webhook_events,
            keys.deadlines,
            keys.inputs,
            keys.input_bytes,
        ]
        args: list[EncodableT] = [
            repr(now),
            self._task_ttl_s,
            JOB_EVENT_LOG_MAXLEN,
            WEBHOOK_PROGRESS_INTERVAL_S,
            keys.job_stream(""),
            WORKERS_GROUP,
            keys.tenant_jobs(""),
            keys.tenant_input_bytes(""),
            LOCAL_TENANT,
            # A job that ends here is added to its tenant's usage of this UTC day.
            keys.usage_prefix,
            usage_day(now),
            self._usage_retention_s,
            # A batch's item that ends may end its batch (``common.batches``).
            keys.batch(""),
            keys.batch_jobs(""),
            keys.job(""),
            keys.job_events(""),
            # A waiting job leaves the scheduler's lists, every job the route's backlog.
            keys.scheduler_prefix,
            keys.backlog(""),
            self._webhook_events_maxlen,
        ]
        for change in changes:
            job_id = change.job_id
            script_keys += [keys.job(job_id), keys.job_events(job_id), keys.input_blob(job_id)]
            args += [change.patch(), keys.progress_channel(job_id)]
        return script_keys, args

    async def statuses(self, job_ids: Sequence[str]) -> list[JobStatus | None]:
        """Each job's status, ``None`` for one unknown (expired); one round trip for all."""
        if not job_ids:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hget(self._keys.job(job_id), "status")
            found: list[str | bytes | None] = await pipe.execute()
        return [None if status is None else JobStatus(_text(status)) for status in found]

    async def get(self, job_id: str) -> JobRecord | None:
        raw = await self._redis.hgetall(self._keys.job(job_id))
        if not raw:
            return None
        return parse_record(raw)

    async def events_after(self, job_id: str, seq: int) -> list[JobEvent]:
        """The logged events with a sequence number above ``seq``, oldest first."""
        entries: list[tuple[str, dict[str, str]]]
        entries = await self._redis.xrange(  # type: ignore[assignment]  # redis-py's union return
            self._keys.job_events(job_id), min=f"({seq}-0", max="+"
        )
        return [JobEvent.model_validate_json(fields["event"]) for _, fields in entries]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def parse_record(raw: dict[Any, Any]) -> JobRecord:
    data = {_text(k): _text(v) for k, v in raw.items()}
    return JobRecord(
        job_id=data["job_id"],
        status=JobStatus(data["status"]),
        progress=int(data["progress"]),
        message=data.get("message", ""),
        model=data["model"],
        task=Task(data["task"]),
        params=RenderParams.model_validate_json(data["params"]),
        seq=int(data["seq"]),
        result_urls=json.loads(data["result_urls"]) if "result_urls" in data else [],
        error=data.get("error"),
        attempts=int(data.get("attempts", 0)),
        created_at=datetime.fromisoformat(data["created_at"]),
        updated_at=float(data["updated_at"]) if "updated_at" in data else None,
        tenant=data.get("tenant", LOCAL_TENANT),
        entry_id=data.get("entry_id"),
        priority=_priority(data.get("priority")),
        queue=data.get("queue"),
    )


def _priority(value: str | None) -> Priority:
    for priority in PRIORITIES:
        if priority == value:
            return priority
    return "normal"  # a job queued before priority classes
