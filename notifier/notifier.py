"""The notifier: a ``notifiers`` group member that turns webhook events into deliveries and sends
them, retrying on a schedule.

Two loops. The consumer reads the events stream and makes each entry a delivery record, due now,
acking and deleting the entry in the same step (``Deliveries.accept``): from then on the record
is the work, and it survives a crash or a Redis restart like any other key. The dispatcher leases
due deliveries (first attempts and retries alike), sends each in a task of its own, and records
the attempt: delivered, blocked, failed for good (410 Gone, or the schedule ran out), or due
again after the schedule's next delay (with jitter, or the receiver's Retry-After if longer).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import structlog
from redis.asyncio import Redis

from common.consumer import Delivery, StreamConsumer, StreamPolicy, sleep_unless
from common.keys import NOTIFIERS_GROUP, Keys
from common.logging import get_logger
from common.redis_errors import REDIS_TRANSIENT, backoff_s, describe, retry_transient
from common.webhooks import (
    LEASE_MARGIN_S,
    Attempt,
    Deliveries,
    DeliveryState,
    StoredDelivery,
    delivery_id,
)
from notifier.metrics import ATTEMPT_SECONDS, ATTEMPTS, NO_SECRET
from notifier.payload import body
from notifier.sender import Outcome, Sender
from notifier.settings import NotifierSettings

log = get_logger(__name__)

# A tenant's valid signing secrets, newest first.
SecretsFor = Callable[[str], Awaitable[list[str]]]
# How often the dispatcher looks for due retries when nothing wakes it sooner.
IDLE_POLL_S = 0.5
# A recorded outcome Redis refuses is retried this long; after that the lease runs out and the
# delivery is sent again (at least once).
REDIS_RETRY_S = 30.0
NO_SECRET_ERROR = (
    "no signing secret: set DARKROOM_WEBHOOK_SECRET for jobs made with auth off; not sent"
)
GONE_BEFORE = "the receiver answered 410 Gone to an earlier delivery; not sent"


class Notifier:
    def __init__(
        self,
        *,
        redis: Redis,
        keys: Keys,
        sender: Sender,
        secrets_for: SecretsFor,
        settings: NotifierSettings,
    ) -> None:
        self._keys = keys
        # An attempt takes at most its timeout: past that and a margin, it is sent again.
        lease_s = settings.webhook_timeout_s + LEASE_MARGIN_S
        self._deliveries = Deliveries(redis, keys, lease_s=lease_s)
        self._sender = sender
        self._secrets_for = secrets_for
        self._settings = settings
        self._schedule_s = settings.webhook_retry_schedule_s
        self._slots = settings.webhook_concurrency
        self._sending: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self.consumer = StreamConsumer(
            redis=redis,
            streams=[keys.webhook_events],
            group=NOTIFIERS_GROUP,
            consumer=settings.consumer_name,
            handler=self.accept,
            dead_stream=keys.dead,
            dead_counts=keys.dead_counts,
            block_ms=settings.block_ms,
            policies={
                keys.webhook_events: StreamPolicy(
                    claim_idle_ms=settings.claim_idle_ms, max_deliveries=10, max_batch=64
                )
            },
        )

    async def run(self, stop: asyncio.Event) -> None:
        self._stop = stop
        log.info("notifier.ready", schedule_s=list(self._schedule_s))
        dispatching = asyncio.create_task(self._dispatch(stop), name="dispatch")
        try:
            await self.consumer.run(stop)
        finally:
            await dispatching
            await self._drain()

    async def accept(self, entries: list[Delivery]) -> None:
        """The consumer's handler: each entry becomes a delivery record, due now."""
        for entry in entries:
            fields = entry.fields
            payload, created = body(fields)
            delivery = StoredDelivery(
                id=delivery_id(fields["job_id"], int(fields["seq"])),
                job_id=fields["job_id"],
                type=fields["type"],
                url=fields["url"],
                state="pending",
                attempts=[],
                # Progress is news only now: one attempt. Start and end get the whole schedule.
                max_attempts=1 if fields["type"] == "job.progress" else len(self._schedule_s),
                created_at=created,
                tenant=fields["tenant"],
                payload=payload,
            )
            await self._deliveries.accept(
                entry.stream,
                NOTIFIERS_GROUP,
                entry.msg_id,
                delivery,
                self._settings.webhook_retention_s,
            )
            log.info("webhook.queued", job_id=delivery.job_id, delivery=delivery.id)
        self._wake.set()

    async def _dispatch(self, stop: asyncio.Event) -> None:
        failures = 0
        while not stop.is_set():
            try:
                free = self._slots - len(self._sending)
                if free > 0:
                    for delivery in await self._deliveries.lease(time.time(), free):
                        task = asyncio.create_task(self._attempt(delivery), name=delivery.id)
                        self._sending.add(task)
                        task.add_done_callback(self._sent)
                next_at = await self._deliveries.next_due_at()
                failures = 0
            except REDIS_TRANSIENT as exc:
                delay_s = backoff_s(failures)
                failures += 1
                log.warning("notifier.redis_unavailable", error=describe(exc), retry_in_s=delay_s)
                await sleep_unless(stop, delay_s)
                continue
            wait_s = IDLE_POLL_S if next_at is None else next_at - time.time()
            await self._nap(stop, min(max(wait_s, 0.01), IDLE_POLL_S))

    async def _nap(self, stop: asyncio.Event, seconds: float) -> None:
        """Until a new delivery, a free slot, the stop, or ``seconds``."""
        self._wake.clear()
        waits = [asyncio.create_task(self._wake.wait()), asyncio.create_task(stop.wait())]
        try:
            await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in waits:
                task.cancel()

    def _sent(self, task: asyncio.Task[None]) -> None:
        self._sending.discard(task)
        self._wake.set()
        if not task.cancelled() and task.exception() is not None:
            log.error("webhook.attempt_crashed", error=repr(task.exception()))

    async def _attempt(self, delivery: StoredDelivery) -> None:
        structlog.contextvars.bind_contextvars(job_id=delivery.job_id, delivery=delivery.id)
        if await self._deliveries.is_gone(delivery.tenant, delivery.url):
            skipped = Attempt(at=datetime.now(UTC), duration_ms=0, error=GONE_BEFORE)
            outcome = Outcome(skipped, "gone")
        elif not (secrets := await self._secrets_for(delivery.tenant)):
            # Nothing unsigned goes out: it waits, retried, until a secret is configured.
            NO_SECRET.inc()
            unsigned = Attempt(at=datetime.now(UTC), duration_ms=0, error=NO_SECRET_ERROR)
            outcome = Outcome(unsigned, "retry")
            log.error("webhook.no_secret", tenant=delivery.tenant, error=NO_SECRET_ERROR)
        else:
            outcome = await self._sender.send(delivery, secrets)
        attempt, made = outcome.attempt, len(delivery.attempts) + 1
        state: DeliveryState = "failed"
        next_at: float | None = None
        match outcome.verdict:
            case "delivered" | "blocked":
                state = outcome.verdict
            case "gone":
                await self._deliveries.mark_gone(
                    delivery.tenant, delivery.url, self._settings.webhook_retention_s
                )
            case "retry" if made < delivery.max_attempts:
                state, next_at = "pending", time.time() + self._delay_s(made, outcome)
        await retry_transient(
            lambda: self._deliveries.record(delivery, attempt, state, next_at),
            for_s=REDIS_RETRY_S,
            event="webhook.record_retry",
        )
        ATTEMPTS.labels(delivery.type, state).inc()
        ATTEMPT_SECONDS.observe(attempt.duration_ms / 1000)
        log.info(
            "webhook.attempt",
            type=delivery.type,
            attempt=made,
            state=state,
            status_code=attempt.status_code,
            error=attempt.error,
            duration_ms=attempt.duration_ms,
            retry_in_s=None if next_at is None else round(next_at - time.time(), 3),
        )

    def _delay_s(self, made: int, outcome: Outcome) -> float:
        """The schedule's delay before attempt ``made + 1``, with jitter; a longer Retry-After
        wins, up to the schedule's longest delay."""
        planned = self._schedule_s[min(made, len(self._schedule_s) - 1)]
        jitter = self._settings.webhook_retry_jitter
        delay = planned * random.uniform(1 - jitter, 1 + jitter)
        if outcome.retry_after_s is not None:
            delay = max(delay, min(outcome.retry_after_s, max(self._schedule_s)))
        return delay

    async def _drain(self) -> None:
        """Attempts in flight get the drain grace to finish; any still running then are left to
        their lease (another notifier sends them again when it runs out)."""
        if self._sending:
            await asyncio.wait(set(self._sending), timeout=self._settings.drain_grace_s)
        for task in self._sending:
            task.cancel()
