"""The one stream-consumer loop, shared by the GPU worker and the uploader.

A member of a consumer group first takes over entries that another member left pending for longer
than ``claim_idle_ms`` (it died, or lost Redis), then reads new ones. The handler owns the ack:
a worker acks in the same transaction that hands its output on. Connection loss backs off and
reconnects; a stop event ends the loop between deliveries, never inside one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import structlog
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import ResponseError

from common.logging import get_logger
from common.redis import REDIS_UNAVAILABLE

log = get_logger(__name__)

RECONNECT_BACKOFF_S = (0.1, 0.5, 1.0, 2.0, 5.0)


@dataclass(frozen=True)
class Delivery:
    stream: str
    msg_id: str
    fields: dict[str, str]
    reclaimed: bool = False


Handler = Callable[[Delivery], Awaitable[None]]
RawFields = dict[str | bytes, str | bytes]


@dataclass
class StreamConsumer:
    redis: Redis
    streams: Sequence[str]
    group: str
    consumer: str
    handler: Handler
    block_ms: int = 2000
    claim_idle_ms: int = 60_000
    _claim_cursors: dict[str, str] = field(default_factory=dict)

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

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set; the delivery in hand is always finished first."""
        await self.ensure_groups()
        failures = 0
        while not stop.is_set():
            try:
                if failures:
                    await self.ensure_groups()  # the server may have restarted empty
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
                with structlog.contextvars.bound_contextvars(
                    stream=delivery.stream, msg_id=delivery.msg_id
                ):
                    await self.handler(delivery)

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
                stream, self.group, self.consumer, self.claim_idle_ms, start_id=cursor, count=1
            )
            self._claim_cursors[stream] = _text(reply[0])
            # Entries deleted while pending come back as None: nothing to do for those.
            claimed = [(m, raw) for m, raw in reply[1] if raw]
            if claimed:
                msg_id, raw = claimed[0]
                log.info(
                    "consumer.reclaimed", stream=stream, msg_id=_text(msg_id), group=self.group
                )
                return [Delivery(stream, _text(msg_id), _fields(raw), reclaimed=True)]
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
