"""The job record and its event log: every state change of a job goes through ``JobStore``.

A change is one Lua call (the scripts are in ``common.job_scripts``), so the record, the per-job
event log, the live pub/sub message and the terminal-event stream always agree: sequence numbers
are strict, progress never goes backwards, and nothing changes a job once it is terminal (a late
or stale writer is simply ignored).

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
from common.job_scripts import COMPLETE_LUA, EMIT_LUA, SUBMIT_LUA
from common.keys import WORKERS_GROUP, Keys
from common.scheduler import DEFAULT_AGING_S
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
from common.usage import SECONDS_PER_DAY, USAGE_RETENTION_DAYS, usage_day

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
        self._emit = redis.register_script(EMIT_LUA)
        self._complete = redis.register_script(COMPLETE_LUA)
        self._submit = redis.register_script(SUBMIT_LUA)

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
