"""The one stream-consumer loop, shared by the GPU worker and the uploader.

A member of a consumer group first takes over entries that another member left pending for longer
than the stream's ``claim_idle_ms`` (it died, lost Redis, or failed and left the entry for a
retry), then reads new ones. Each delivery knows its attempt number; past ``max_deliveries`` an
entry goes to the dead-letter stream instead of the handler, so nothing loops forever.

A round is one delivery, or for a stream whose policy allows batches, up to ``max_batch`` entries
that were waiting together (gathered for at most ``batch_window_ms``). A member whose streams are
fed by a scheduler (``common.scheduler``) has it choose what they hold before each read
(``before_read``).

The handler owns the ack: a worker hands its output on and acks in one atomic step, and only if
the entry is still its own (``forward``). While a delivery is held (from its read until it is
acked, forwarded, buried or released, or the handler returns without ``hold``-ing it) its claim is
kept fresh (``claims_kept``), so nobody steals a long job from a live member; a claim found lost
anyway is reported to ``on_claim_lost``. Connection loss backs off and reconnects; a stop event
ends the loop between rounds, never inside one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

import structlog
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import ResponseError

from common.logging import get_logger
from common.redis_errors import RECONNECT_BACKOFF_S, REDIS_TRANSIENT, backoff_s

log = get_logger(__name__)

DEAD_MAXLEN = 100_000

# KEYS: stream; ARGV: group, consumer, msg_id. Resets the entry's idle time, if still ours.
_KEEP_CLAIM = """
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if #pending == 0 or pending[1][2] ~= ARGV[2] then return 0 end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'JUSTID')
return 1
"""

# KEYS: per entry its stream, its target and its blob keys; ARGV: group, consumer, blob TTL, then
# per entry: msg_id, field, value, the number of blobs, then the blobs' bytes. For each entry:
# writes its blobs, appends to its target stream and acks, only if the entry is still ours: a
# member that lost it writes nothing at all for it. Returns 1 or 0 for each.
_FORWARD = """
local group, consumer, ttl = ARGV[1], ARGV[2], ARGV[3]
local k, a, out = 1, 4, {}
while a <= #ARGV do
  local stream, target, msg_id, n = KEYS[k], KEYS[k + 1], ARGV[a], tonumber(ARGV[a + 3])
  local pending = redis.call('XPENDING', stream, group, msg_id, msg_id, 1)
  if #pending == 0 or pending[1][2] ~= consumer then
    out[#out + 1] = 0
  else
    for i = 1, n do redis.call('SET', KEYS[k + 1 + i], ARGV[a + 3 + i], 'EX', ttl) end
    redis.call('XADD', target, '*', ARGV[a + 1], ARGV[a + 2])
    redis.call('XACK', stream, group, msg_id)
    redis.call('XDEL', stream, msg_id)
    out[#out + 1] = 1
  end
  k, a = k + 2 + n, a + 4 + n
end
return out
"""

# KEYS: stream; ARGV: group, consumer, msg_id, idle_ms, deliveries to uncount (1 or 0). Gives an
# entry back to the group at once: it looks idle long enough for any member's next claim, and
# this delivery is not counted (unless ARGV[5] is 0).
_RELEASE = """
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if #pending == 0 or pending[1][2] ~= ARGV[2] then return 0 end
local count = math.max(pending[1][4] - tonumber(ARGV[5]), 0)
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3],
           'IDLE', ARGV[4], 'RETRYCOUNT', count, 'JUSTID')
return 1
"""
# Older than any claim idle time: a released entry is taken by the next member that looks.
RELEASED_IDLE_MS = 10 * 365 * 24 * 3600 * 1000


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
class Forward:
    """One entry for ``StreamConsumer.forward_all``: ``{name: value}`` goes to ``target``, with
    ``blobs`` (key → bytes) written beside it."""

    delivery: Delivery
    target: str
    name: str
    value: str
    blobs: Mapping[str, bytes] = field(default_factory=dict)


@dataclass(frozen=True)
class StreamPolicy:
    """How long an entry may sit with a silent member, and how many deliveries it gets."""

    claim_idle_ms: int = 60_000
    max_deliveries: int = 5
    # Deliver up to this many entries of the stream in one round, waiting at most
    # ``batch_window_ms`` after the first for more to arrive.
    max_batch: int = 1
    batch_window_ms: int = 0


Handler = Callable[[list[Delivery]], Awaitable[None]]
DeliveryHook = Callable[[Delivery], Awaitable[None]]
# Told the streams and the entries per stream a read is about to ask for.
ReadHook = Callable[[Sequence[str], int], Awaitable[None]]
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
    on_dead: DeliveryHook | None = None
    # Hash counting each stream's dead letters (``Keys.dead_counts``), for metrics; None: none.
    dead_counts: str | None = None
    # Told about a held delivery that another member took over: stop working on it.
    on_claim_lost: DeliveryHook | None = None
    # Runs before every read of new entries: the worker's scheduler refill.
    before_read: ReadHook | None = None
    _claim_cursors: dict[str, str] = field(default_factory=dict)
    # When each stream's pending entries were last scanned through and none was claimable.
    _claims_scanned_at: dict[str, float] = field(default_factory=dict)
    _held: dict[tuple[str, str], Delivery] = field(default_factory=dict)
    _retained: set[tuple[str, str]] = field(default_factory=set)

    def __post_init__(self) -> None:
        # EVALSHA, loading the script again after a Redis restart.
        self._keep_claim = self.redis.register_script(_KEEP_CLAIM)
        self._forward = self.redis.register_script(_FORWARD)
        self._release = self.redis.register_script(_RELEASE)

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
        self._settle(delivery)
        pipe.xack(delivery.stream, self.group, delivery.msg_id)
        pipe.xdel(delivery.stream, delivery.msg_id)

    def hold(self, delivery: Delivery) -> None:
        """Keep the claim fresh after the handler returns: the delivery went on to a later
        stage that will ack, forward or release it."""
        self._retained.add(_key(delivery))

    def holds(self, delivery: Delivery) -> bool:
        """Whether the delivery is still this member's to finish (its claim was not lost)."""
        return _key(delivery) in self._held

    def leave_pending(self, delivery: Delivery) -> None:
        """Stop keeping the claim: after the stream's claim idle time the entry is delivered
        again (perhaps here), which is how a failed render is retried."""
        self._settle(delivery)

    async def release(self, delivery: Delivery, *, count_attempt: bool = False) -> None:
        """Give the entry back to the group now. A member shutting down releases what it read
        but will not finish, without counting this delivery; one whose work failed half-way
        (a stuck render) counts it, so an entry that fails everywhere ends in the dead stream."""
        self._settle(delivery)
        uncount = 0 if count_attempt else 1
        await self._release(
            keys=[delivery.stream],
            args=[self.group, self.consumer, delivery.msg_id, RELEASED_IDLE_MS, uncount],
        )

    def _settle(self, delivery: Delivery) -> None:
        self._held.pop(_key(delivery), None)
        self._retained.discard(_key(delivery))

    async def ack(self, delivery: Delivery) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            self.ack_in(pipe, delivery)
            await pipe.execute()

    async def forward(
        self,
        delivery: Delivery,
        target: str,
        name: str,
        value: str,
        *,
        blobs: Mapping[str, bytes] | None = None,
        blob_ttl_s: int = 0,
    ) -> bool:
        """Write ``blobs`` (key → bytes, with a TTL), append ``{name: value}`` to ``target`` and
        ack, atomically and only if the entry is still this member's. ``False``: another member
        took it over, and nothing was written. On a Redis error the delivery stays held."""
        (done,) = await self.forward_all(
            [Forward(delivery, target, name, value, blobs or {})], blob_ttl_s=blob_ttl_s
        )
        return done

    async def forward_all(self, items: Sequence[Forward], *, blob_ttl_s: int = 0) -> list[bool]:
        """``forward`` for several entries in one round trip (a batch's outputs), each on its
        own: one whose claim was lost writes nothing, the others go on. On a Redis error every
        delivery stays held."""
        keys: list[str] = []
        args: list[str | bytes | int] = [self.group, self.consumer, blob_ttl_s]
        for item in items:
            keys += [item.delivery.stream, item.target, *item.blobs]
            args += [item.delivery.msg_id, item.name, item.value, len(item.blobs)]
            args += item.blobs.values()
            self._settle(item.delivery)  # before the call: the claim keeper must not see it acked
        try:
            done = await self._forward(keys=keys, args=args)
        except BaseException:
            for item in items:  # not handed on: still ours to keep
                self._held[_key(item.delivery)] = item.delivery
            raise
        return [bool(one) for one in done]

    async def ack_by(self, delivery: Delivery, step: Callable[[], Awaitable[bool]]) -> bool:
        """Run ``step``, the caller's own script that acks the entry in the same atomic step as
        the work it confirms, and says whether it did. Meanwhile the claim is not kept (the
        keeper must not find it acked and call it lost); it is again if ``step`` did not ack
        or raised."""
        self._settle(delivery)
        try:
            acked = await step()
        except BaseException:
            self._held[_key(delivery)] = delivery
            raise
        if not acked:
            self._held[_key(delivery)] = delivery
        return acked

    async def keep_claim(self, delivery: Delivery) -> bool:
        """Reset the entry's idle time so a long job is not taken over; ``False`` if lost."""
        kept = await self._keep_claim(
            keys=[delivery.stream], args=[self.group, self.consumer, delivery.msg_id]
        )
        return bool(kept)

    @contextlib.asynccontextmanager
    async def claims_kept(self) -> AsyncIterator[None]:
        """Keep every held delivery's claim fresh while the block runs."""
        done = asyncio.Event()
        keeper = asyncio.create_task(self._keep_claims(done), name=f"{self.group}-claims")
        try:
            yield
        finally:
            done.set()  # the keeper stops between calls: none is cancelled half-way
            await keeper

    async def _keep_claims(self, done: asyncio.Event) -> None:
        interval_s = min(self.policy(s).claim_idle_ms for s in self.streams) / 3000
        while not done.is_set():
            await sleep_unless(done, interval_s)
            for key, delivery in list(self._held.items()):
                try:
                    kept = await self.keep_claim(delivery)
                except REDIS_TRANSIENT:
                    break  # the consumer loop reports the outage; try again next round
                if not kept and self._held.pop(key, None) is not None:
                    log.warning(
                        "consumer.claim_lost", stream=delivery.stream, msg_id=delivery.msg_id
                    )
                    if self.on_claim_lost is not None:
                        await self.on_claim_lost(delivery)

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set; the round in hand is always handled first."""
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
            except REDIS_TRANSIENT as exc:
                delay_s = backoff_s(failures)
                failures += 1
                log.warning(
                    "consumer.redis_unavailable",
                    group=self.group,
                    error=str(exc),
                    retry_in_s=delay_s,
                )
                await sleep_unless(stop, delay_s)
                continue
            try:
                await self._deliver(deliveries)
            except REDIS_TRANSIENT as exc:
                # The entries stay pending: after their claim idle time they are delivered again.
                failures += 1
                log.warning("consumer.handler_redis_unavailable", error=str(exc))
                await sleep_unless(stop, RECONNECT_BACKOFF_S[0])
            finally:
                for delivery in deliveries:
                    if _key(delivery) not in self._retained:
                        self._settle(delivery)

    async def _deliver(self, deliveries: list[Delivery]) -> None:
        live = []
        for delivery in deliveries:
            self._held[_key(delivery)] = delivery
            if delivery.attempt > self.policy(delivery.stream).max_deliveries:
                with structlog.contextvars.bound_contextvars(
                    stream=delivery.stream, msg_id=delivery.msg_id, attempt=delivery.attempt
                ):
                    await self.bury(delivery)
            else:
                live.append(delivery)
        if live:
            await self.handler(live)

    async def bury(self, delivery: Delivery) -> None:
        """Move the entry to the dead stream: it ran out of deliveries, or cannot be read."""
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
            if self.dead_counts is not None:
                pipe.hincrby(self.dead_counts, delivery.stream, 1)
            self.ack_in(pipe, delivery)
            await pipe.execute()

    async def _read_new(self) -> list[Delivery]:
        deliveries = await self._read(self.streams, 1, self.block_ms)
        for stream in {d.stream for d in deliveries}:
            policy = self.policy(stream)
            if policy.max_batch > 1:
                deliveries += await self._gather(stream, policy)
        return deliveries

    async def _gather(self, stream: str, policy: StreamPolicy) -> list[Delivery]:
        """More entries of a stream for the round: those waiting now, then those arriving within
        the batch window, up to the batch size."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + policy.batch_window_ms / 1000
        gathered: list[Delivery] = []
        while len(gathered) < policy.max_batch - 1:
            remaining_ms = int((deadline - loop.time()) * 1000)
            block_ms = remaining_ms if remaining_ms >= 1 else None
            more = await self._read([stream], policy.max_batch - 1 - len(gathered), block_ms)
            gathered += more
            if not more and block_ms is None:
                break
        return gathered

    async def _read(
        self, streams: Sequence[str], count: int, block_ms: int | None
    ) -> list[Delivery]:
        """New entries, up to ``count`` per stream; ``block_ms=None`` does not wait."""
        if self.before_read is not None:
            await self.before_read(streams, count)
        reply: list[tuple[str | bytes, list[tuple[str | bytes, RawFields | None]]]] | None
        reply = await self.redis.xreadgroup(  # type: ignore[assignment]  # redis-py's union return
            self.group, self.consumer, {s: ">" for s in streams}, count=count, block=block_ms
        )
        return [
            Delivery(_text(stream), _text(msg_id), _fields(raw))
            for stream, entries in reply or []
            for msg_id, raw in entries
            if raw is not None
        ]

    async def _claim_stale(self) -> list[Delivery]:
        now = asyncio.get_running_loop().time()
        for stream in self.streams:
            # A busy member does not scan every round: at most once per block time (or claim
            # idle time, if shorter) after a scan that found nothing, which is as often as an
            # idle one scans (between reads that wait the block time). An entry does not wait
            # longer to be taken over than it does when the group is idle.
            every_s = min(self.block_ms, self.policy(stream).claim_idle_ms) / 1000
            scanned_at = self._claims_scanned_at.get(stream)
            if scanned_at is not None and now - scanned_at < every_s:
                continue
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
            if self._claim_cursors[stream] == "0-0":  # scanned through: none to take over
                self._claims_scanned_at[stream] = now
        return []


async def sleep_unless(stop: asyncio.Event, delay_s: float) -> None:
    """Sleep ``delay_s``, or less if ``stop`` is set meanwhile."""
    try:
        await asyncio.wait_for(stop.wait(), timeout=delay_s)
    except TimeoutError:
        pass


def _key(delivery: Delivery) -> tuple[str, str]:
    return delivery.stream, delivery.msg_id


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _fields(raw: RawFields) -> dict[str, str]:
    return {_text(k): _text(v) for k, v in raw.items()}
