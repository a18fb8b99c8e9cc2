"""Batches: many jobs submitted in one request, all queued or none, read back as one.

A batch's items are ordinary jobs (own record, events, webhooks, cancel, deadline); the batch is
a small record (``batch:<id>``: tenant, seed API, size, items not yet ended) and the list of its
job ids in request order. One script writes every item's record, first event and place in its
waiting list, after checking the tenant's ``max_queued`` and the route's ``max_queue`` (its
backlog) for all of them at once: a batch that does not fit is refused whole. Items queue in
their tenant's waiting list one after another (``common.scheduler``), so workers take them
together and micro-batch them. The job store's terminal change counts the batch's items down
and starts its expiry with its last one (``common.jobs``).

Nothing about a batch's state is stored twice: its status, counts and progress are computed from
its items' records when asked.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pydantic import BaseModel
from redis.asyncio import Redis
from redis.typing import EncodableT

from common.jobs import (
    JOB_EVENT_LOG_MAXLEN,
    UNFINISHED_TTL_S,
    ClaimExpired,
    KeyClaim,
    QueueFull,
    TenantQueueFull,
    TenantQuota,
    first_event,
    parse_record,
    record_fields,
)
from common.keys import WORKERS_GROUP, Keys
from common.scheduler import DEFAULT_AGING_S, SCHEDULER_LUA
from common.schemas import JobRecord, JobSpec, JobStatus, SeedApi, Webhook
from common.tenants import LOCAL_TENANT

MAX_BATCH_ITEMS = 100
# Arguments before the items', and each item's count (see ``_SUBMIT_BATCH``).
_HEAD_ARGS = 19
_ITEM_ARGS = 5

# KEYS: ready stream, tenant's jobs, deadlines, claimed key ('' if none), batch, batch's jobs,
# the route's backlog, then each item's job and job events. ARGV: max queue (0: none), tenant's
# max queued (0: none), has claim, claim held, claim final, claim TTL, unfinished TTL, event log
# maxlen, now, deadline ('' if none), the batch record (a JSON list of field, value…), item
# count, scheduler prefix, job key prefix, workers group, the tenant of a record without one,
# route, tenant, aging limit (s); then per item: job id, first event, spec, record (a JSON list
# of field, value…), priority class.
_SUBMIT_BATCH = (
    SCHEDULER_LUA
    + """
local stream, tenant_jobs, deadlines, claim = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local batch, batch_jobs, backlog = KEYS[5], KEYS[6], KEYS[7]
local max_queue, max_queued = tonumber(ARGV[1]), tonumber(ARGV[2])
local has_claim = ARGV[3] == '1'
local ttl_s, log_maxlen, now, deadline = tonumber(ARGV[7]), ARGV[8], tonumber(ARGV[9]), ARGV[10]
local n = tonumber(ARGV[12])
local sched_prefix, job_prefix, group, local_tenant = ARGV[13], ARGV[14], ARGV[15], ARGV[16]
local model, tenant, aging_s = ARGV[17], ARGV[18], tonumber(ARGV[19])
-- Room for all of them, or nothing: a batch of N is N jobs for the tenant's limit and the
-- route's. Only reads until the first write, as in the single submit (an out-of-memory Redis
-- refuses a script at its first write).
local live_since = now - ttl_s
if max_queued > 0 then
  local active = redis.call('ZCOUNT', tenant_jobs, '(' .. live_since, '+inf')
  if active + n > max_queued then return {'tenant_queue_full', active} end
end
if max_queue > 0 then
  local depth = redis.call('XLEN', backlog)
  if depth + n > max_queue then return {'queue_full', depth} end
end
if has_claim and redis.call('GET', claim) ~= ARGV[4] then return {'claim_expired', 0} end
redis.call('HSET', batch, unpack(cjson.decode(ARGV[11])))
redis.call('EXPIRE', batch, ttl_s)
redis.call('ZREMRANGEBYSCORE', tenant_jobs, '-inf', live_since)
for i = 1, n do
  local a = 19 + (i - 1) * 5
  local job_id, job, log = ARGV[a + 1], KEYS[6 + 2 * i], KEYS[7 + 2 * i]
  redis.call('HSET', job, unpack(cjson.decode(ARGV[a + 4])))
  redis.call('XADD', log, 'MAXLEN', '~', log_maxlen, '1-0', 'event', ARGV[a + 2])
  redis.call('EXPIRE', job, ttl_s)
  redis.call('EXPIRE', log, ttl_s)
  -- Items queue one after another in their tenant's list: workers take them together.
  local list = sched_enqueue(sched_prefix, model, ARGV[a + 5], tenant, job_id, now)
  local entry = redis.call('XADD', backlog, '*', 'job_id', job_id)
  redis.call('HSET', job, 'queue', list, 'queued_at', ARGV[9], 'backlog_id', entry)
  redis.call('ZADD', tenant_jobs, now, job_id)
  if deadline ~= '' then redis.call('ZADD', deadlines, deadline, job_id) end
  redis.call('RPUSH', batch_jobs, job_id)
end
-- As many as were queued are chosen for the ready stream: idle workers wake for them.
sched_refill(sched_prefix, job_prefix, stream, group, model, n, now, aging_s, local_tenant)
redis.call('EXPIRE', batch_jobs, ttl_s)
redis.call('EXPIRE', tenant_jobs, ttl_s)
if has_claim then redis.call('SET', claim, ARGV[5], 'EX', ARGV[6]) end
return {'ok', 0}
"""
)


class BatchStatus(StrEnum):
    """A batch's state, from its items': ``partial`` when they ended differently."""

    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELED = "canceled"
    PARTIAL = "partial"

    @property
    def terminal(self) -> bool:
        return self not in (BatchStatus.PENDING, BatchStatus.PROCESSING)

    @property
    def v1(self) -> str:
        """Seed 2's name: its job names (``PENDING``, ``STARTED``…), and ``PARTIAL``."""
        if self == BatchStatus.PARTIAL:
            return "PARTIAL"
        return JobStatus(self.value).v1


@dataclass(frozen=True)
class BatchItem:
    """One job of a batch, as the submit writes it."""

    spec: JobSpec
    webhook: Webhook | None = None


class BatchRecord(BaseModel):
    """The ``batch:<id>`` hash and its job ids, parsed."""

    batch_id: str
    tenant: str
    api: SeedApi
    model: str
    job_ids: list[str]
    created_at: float


@dataclass(frozen=True)
class BatchState:
    """A batch and its items' records now."""

    batch: BatchRecord
    items: list[JobRecord]

    @property
    def status(self) -> BatchStatus:
        return batch_status([item.status for item in self.items])

    @property
    def progress(self) -> int:
        """Mean of the items' progress, an ended item counting as done."""
        done = [100 if item.status.terminal else item.progress for item in self.items]
        return sum(done) // max(1, len(done))

    @property
    def seq(self) -> int:
        """Grows with every change to any item (the sum of their event sequence numbers): the
        batch feed's event id."""
        return sum(item.seq for item in self.items)

    def counts(self) -> dict[JobStatus, int]:
        found = dict.fromkeys(JobStatus, 0)
        for item in self.items:
            found[item.status] += 1
        return found


def batch_status(statuses: list[JobStatus]) -> BatchStatus:
    if all(status == JobStatus.PENDING for status in statuses):
        return BatchStatus.PENDING
    if not all(status.terminal for status in statuses):
        return BatchStatus.PROCESSING
    ended = set(statuses)
    return BatchStatus(ended.pop().value) if len(ended) == 1 else BatchStatus.PARTIAL


def _flat(fields: dict[Any, EncodableT]) -> str:
    """A record as the JSON list ``[field, value, …]`` the script HSETs, values encoded as
    redis-py encodes them (floats by ``repr``), so a batch's item reads back like a job."""
    out: list[str] = []
    for name, value in fields.items():
        out.append(str(name))
        out.append(repr(value) if isinstance(value, float) else str(value))
    return json.dumps(out)


class BatchStore:
    def __init__(
        self, redis: Redis, keys: Keys, *, priority_aging_s: float = DEFAULT_AGING_S
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._priority_aging_s = priority_aging_s
        self._submit = redis.register_script(_SUBMIT_BATCH)

    async def submit(
        self,
        batch_id: str,
        items: list[BatchItem],
        *,
        tenant: str,
        api: SeedApi,
        message: str,
        deadline_at: float | None = None,
        max_queue: int | None = None,
        quota: TenantQuota | None = None,
        claim: KeyClaim | None = None,
    ) -> None:
        """Write the batch and every item (record, first event, waiting-list place) in one
        script, or nothing: ``TenantQueueFull`` when the tenant's unfinished jobs plus these pass
        its ``max_queued``, ``QueueFull`` when the route's backlog plus these pass ``max_queue``,
        ``ClaimExpired`` when the ``Idempotency-Key`` claim no longer holds. Every item is of one
        route (``items[0].spec.model``)."""
        if not 1 <= len(items) <= MAX_BATCH_ITEMS:
            raise ValueError(f"a batch holds 1 to {MAX_BATCH_ITEMS} items, not {len(items)}")
        keys, now = self._keys, time.time()
        model = items[0].spec.model
        batch_fields: dict[Any, EncodableT] = {
            "batch_id": batch_id,
            "tenant": tenant,
            "api": api,
            "model": model,
            "size": len(items),
            "unfinished": len(items),
            "created_at": now,
        }
        script_keys = [
            keys.job_stream(model),
            keys.tenant_jobs(tenant),
            keys.deadlines,
            claim.key if claim is not None else "",
            keys.batch(batch_id),
            keys.batch_jobs(batch_id),
            keys.backlog(model),
        ]
        args: list[EncodableT] = [
            max_queue or 0,
            (quota.max_queued or 0) if quota else 0,
            int(claim is not None),
            claim.held if claim else "",
            claim.final if claim else "",
            claim.ttl_s if claim else 0,
            UNFINISHED_TTL_S,
            JOB_EVENT_LOG_MAXLEN,
            repr(now),
            repr(deadline_at) if deadline_at is not None else "",
            _flat(batch_fields),
            len(items),
            keys.scheduler_prefix,
            keys.job(""),
            WORKERS_GROUP,
            LOCAL_TENANT,
            model,
            tenant,
            repr(self._priority_aging_s),
        ]
        assert len(args) == _HEAD_ARGS
        for item in items:
            spec = item.spec
            if spec.model != model or spec.tenant != tenant:
                raise ValueError("a batch's items share one route and one tenant")
            record = record_fields(spec, message, now, webhook=item.webhook, api=api)
            record["batch"] = batch_id
            script_keys += [keys.job(spec.job_id), keys.job_events(spec.job_id)]
            item_args: list[EncodableT] = [
                spec.job_id,
                first_event(spec, message, now).model_dump_json(),
                spec.model_dump_json(),
                _flat(record),
                spec.priority,
            ]
            assert len(item_args) == _ITEM_ARGS
            args += item_args
        outcome, depth = await self._submit(keys=script_keys, args=args)
        if outcome == "tenant_queue_full":
            raise TenantQueueFull(int(depth))
        if outcome == "queue_full":
            raise QueueFull(int(depth))
        if outcome == "claim_expired":
            raise ClaimExpired(claim.key if claim else "")

    async def get(self, batch_id: str) -> BatchRecord | None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hgetall(self._keys.batch(batch_id))
            pipe.lrange(self._keys.batch_jobs(batch_id), 0, -1)
            raw, job_ids = await pipe.execute()
        if not raw:
            return None
        data = {_text(k): _text(v) for k, v in raw.items()}
        return BatchRecord(
            batch_id=data["batch_id"],
            tenant=data["tenant"],
            api="v1" if data["api"] == "v1" else "api",
            model=data["model"],
            job_ids=[_text(job_id) for job_id in job_ids],
            created_at=float(data["created_at"]),
        )

    async def state(self, batch: BatchRecord) -> BatchState | None:
        """The batch with its items' records, read in one round trip; ``None`` once it has
        expired (its items expire with it: one missing means all are going)."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for job_id in batch.job_ids:
                pipe.hgetall(self._keys.job(job_id))
            raws: list[dict[Any, Any]] = await pipe.execute()
        if not all(raws):
            return None
        return BatchState(batch, [parse_record(raw) for raw in raws])


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
