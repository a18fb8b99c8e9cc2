"""The one stream-consumer loop, shared by the GPU worker and the uploader.

A member of a consumer group first takes over entries that another member left pending for longer
than the stream's ``claim_idle_ms`` (it died, lost Redis, or failed and left the entry for a
retry), then reads new ones. Each delivery knows its attempt number; past ``max_deliveries`` an
entry goes to the dead-letter stream instead of the handler, so nothing loops forever.

The handler owns the ack: a worker hands its output on and acks in one atomic step, and only if
the entry is still its own (``forward``). A member busy with a long job keeps its claim fresh
(``keep_claim``) so nobody steals it. Connection loss backs off and reconnects; a stop event ends
the loop between deliveries, never inside one.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

import structlog
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import ResponseError

from common.logging import get_logger
from common.redis import REDIS_UNAVAILABLE

log = get_logger(__name__)

RECONNECT_BACKOFF_S = (0.1, 0.5, 1.0, 2.0, 5.0)
DEAD_MAXLEN = 100_000

# KEYS: stream; ARGV: group, consumer, msg_id. Resets the entry's idle time, if still ours.
_KEEP_CLAIM = """
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if #pending == 0 or pending[1][2] ~= ARGV[2] then return 0 end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'JUSTID')
return 1
"""

# KEYS: stream, target; ARGV: group, consumer, msg_id, field, value.
# Appends to the target stream and acks, only if the entry is still ours.
_FORWARD = """
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if #pending == 0 or pending[1][2] ~= ARGV[2] then return 0 end
redis.call('XADD', KEYS[2], '*', ARGV[4], ARGV[5])
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
redis.call('XDEL', KEYS[1], ARGV[3])
return 1
"""


@dataclass(frozen=True)
class Delivery:
    stream: str
    msg_id: str
    fields: dict[str, str]
    # 1 for a first delivery; counts every delivery to any member of the group.
    attempt: int = 1

    @property
    def reclaimed(self) -> bool:
        return self.attempt > 1


@dataclass(frozen=True)
class StreamPolicy:
    """How long an entry may sit with a silent member, and how many deliveries it gets."""

    claim_idle_ms: int = 60_000
    max_deliveries: int = 5


Handler = Callable[[Delivery], Awaitable[None]]
RawFields = dict[str | bytes, str | bytes]


@dataclass
class StreamConsumer:
    redis: Redis
    streams: Sequence[str]
    group: str
    consumer: str
    handler: Handler
    dead_stream: str
    block_ms: int = 2000
    policies: Mapping[str, StreamPolicy] = field(default_factory=dict)
    # Told about an entry that ran out of deliveries, before it moves to the dead stream.
    on_dead: Handler | None = None
    _claim_cursors: dict[str, str] = field(default_factory=dict)

    def policy(self, stream: str) -> StreamPolicy:
        return self.policies.get(stream, StreamPolicy())

    async def ensure_groups(self) -> None:
        for stream in self.streams:
            try:
                await self.redis.xgroup_create(stream, self.group, id="0", mkstream=True)
            except ResponseError as exc:
                if not str(exc).startswith("BUSYGROUP"):
                    raise

    def ack_in(self, pipe: Pipeline, delivery: Delivery) -> None:
        """Queue the ack on a caller's transaction, so it commits with the work it confirms.
        Acked entries are deleted too: the stream holds only work not yet done."""
        pipe.xack(delivery.stream, self.group, delivery.msg_id)
        pipe.xdel(delivery.stream, delivery.msg_id)

    async def ack(self, delivery: Delivery) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            self.ack_in(pipe, delivery)
            await pipe.execute()

    async def forward(self, delivery: Delivery, target: str, name: str, value: str) -> bool:
        """Append ``{name: value}`` to ``target`` and ack, atomically and only if the entry is
        still this member's. ``False``: another member took it over; publish nothing."""
        done = await self.redis.eval(
            _FORWARD, 2, delivery.stream, target,
            self.group, self.consumer, delivery.msg_id, name, value,
        )  # fmt: skip
        return bool(done)

    async def keep_claim(self, delivery: Delivery) -> bool:
        """Reset the entry's idle time so a long job is not taken over; ``False`` if lost."""
        kept = await self.redis.eval(
            _KEEP_CLAIM, 1, delivery.stream, self.group, self.consumer, delivery.msg_id
        )
        return bool(kept)

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set; the delivery in hand is always finished first."""
        failures = 0
        groups_ready = False
        while not stop.is_set():
            try:
                if failures or not groups_ready:
                    # At start, and after an outage: the server may have restarted empty.
                    await self.ensure_groups()
                    groups_ready = True
                deliveries = await self._claim_stale() or await self._read_new()
                failures = 0
            except REDIS_UNAVAILABLE as exc:
                delay_s = RECONNECT_BACKOFF_S[min(failures, len(RECONNECT_BACKOFF_S) - 1)]
                failures += 1
                log.warning(
                    "consumer.redis_unavailable",
                    group=self.group,
                    error=str(exc),
                    retry_in_s=delay_s,
                )
                await sleep_unless(stop, delay_s)
                continue
            for delivery in deliveries:
                try:
                    await self._deliver(delivery)
                except REDIS_UNAVAILABLE as exc:
                    # The entry stays pending: after its claim idle time it is delivered again.
                    failures += 1
                    log.warning("consumer.handler_redis_unavailable", error=str(exc))
                    await sleep_unless(stop, RECONNECT_BACKOFF_S[0])

    async def _deliver(self, delivery: Delivery) -> None:
        with structlog.contextvars.bound_contextvars(
            stream=delivery.stream, msg_id=delivery.msg_id, attempt=delivery.attempt
        ):
            if delivery.attempt > self.policy(delivery.stream).max_deliveries:
                await self._bury(delivery)
            else:
                await self.handler(delivery)

    async def _bury(self, delivery: Delivery) -> None:
        log.error("consumer.dead_letter", group=self.group)
        if self.on_dead is not None:
            await self.on_dead(delivery)
        record = {
            "stream": delivery.stream,
            "group": self.group,
            "msg_id": delivery.msg_id,
            "attempts": str(delivery.attempt - 1),
            "fields": json.dumps(delivery.fields),
        }
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xadd(self.dead_stream, record, maxlen=DEAD_MAXLEN, approximate=True)  # type: ignore[arg-type]
            self.ack_in(pipe, delivery)
            await pipe.execute()

    async def _read_new(self) -> list[Delivery]:
        reply: list[tuple[str | bytes, list[tuple[str | bytes, RawFields | None]]]] | None
        reply = await self.redis.xreadgroup(  # type: ignore[assignment]  # redis-py's union return
            self.group, self.consumer, {s: ">" for s in self.streams}, count=1, block=self.block_ms
        )
        return [
            Delivery(_text(stream), _text(msg_id), _fields(raw))
            for stream, entries in reply or []
            for msg_id, raw in entries
            if raw is not None
        ]

    async def _claim_stale(self) -> list[Delivery]:
        for stream in self.streams:
            cursor = self._claim_cursors.get(stream, "0-0")
            reply = await self.redis.xautoclaim(
                stream,
                self.group,
                self.consumer,
                self.policy(stream).claim_idle_ms,
                start_id=cursor,
                count=1,
            )
            self._claim_cursors[stream] = _text(reply[0])
            # Entries deleted while pending come back as None: nothing to do for those.
            claimed = [(m, raw) for m, raw in reply[1] if raw]
            if claimed:
                msg_id, raw = _text(claimed[0][0]), claimed[0][1]
                pending = await self.redis.xpending_range(
                    stream, self.group, min=msg_id, max=msg_id, count=1
                )
                attempt = int(pending[0]["times_delivered"]) if pending else 1
                log.info("consumer.reclaimed", stream=stream, msg_id=msg_id, attempt=attempt)
                return [Delivery(stream, msg_id, _fields(raw), attempt=attempt)]
        return []


async def sleep_unless(stop: asyncio.Event, delay_s: float) -> None:
    """Sleep ``delay_s``, or less if ``stop`` is set meanwhile."""
    try:
        await asyncio.wait_for(stop.wait(), timeout=delay_s)
    except TimeoutError:
        pass


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _fields(raw: RawFields) -> dict[str, str]:
    return {_text(k): _text(v) for k, v in raw.items()}
