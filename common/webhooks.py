"""Webhook deliveries in Redis: made from the notifier's stream, leased, attempted, logged.

A delivery is one event for one job's webhook. Its id (``msg_<job>_<seq>``, the ``webhook-id``
header) is fixed by the event, so a stream entry handed out twice still makes one delivery, and
every attempt of it, retries and redeliveries included, carries the same id. Its record keeps the
URL, tenant, payload and every attempt for the whole retry schedule plus a day, beyond its job's
shorter-lived record: the delivery log and redeliver routes authorise from it.

Sending is leased, not locked: a notifier moves a due delivery's time a lease ahead before it
sends, and records the outcome after. One that dies in between leaves the delivery due again when
the lease runs out, and some notifier sends it again (at least once; a receiver may see one
``webhook-id`` twice and should deduplicate on it).
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field
from redis.asyncio import Redis

from common.keys import Keys

DeliveryState = Literal["pending", "delivered", "failed", "blocked"]
# How long past its timeout a notifier may take over one attempt before another sends it again.
LEASE_MARGIN_S = 5.0


def delivery_id(job_id: str, seq: int) -> str:
    return f"msg_{job_id.replace('-', '')}_{seq}"


def url_digest(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()


class Attempt(BaseModel):
    """One try at sending a delivery."""

    at: datetime
    status_code: int | None = Field(default=None, description="The receiver's answer, if any.")
    duration_ms: int
    error: str | None = Field(default=None, description="Why it did not count as delivered.")


class Delivery(BaseModel):
    """A webhook delivery as the delivery log shows it."""

    id: str = Field(description="The webhook-id header of every attempt.")
    job_id: str
    type: str = Field(
        description="job.started, job.progress, job.completed, job.failed or job.canceled"
    )
    url: str
    state: DeliveryState
    attempts: list[Attempt]
    max_attempts: int = Field(description="Attempts this delivery may take in all.")
    created_at: datetime
    next_attempt_at: datetime | None = None


class StoredDelivery(Delivery):
    """What the notifier needs besides: who it is for and the exact body it signs."""

    tenant: str
    payload: str


def _when(value: float) -> datetime:
    return datetime.fromtimestamp(value, UTC)


def parse_delivery(raw: dict[str, str]) -> StoredDelivery:
    next_at = raw.get("next_attempt_at")
    return StoredDelivery(
        id=raw["id"],
        job_id=raw["job_id"],
        type=raw["type"],
        url=raw["url"],
        state=raw["state"],  # type: ignore[arg-type]  # written only by this module
        attempts=[Attempt.model_validate(a) for a in json.loads(raw.get("attempts", "[]"))],
        max_attempts=int(raw["max_attempts"]),
        created_at=_when(float(raw["created_at"])),
        next_attempt_at=_when(float(next_at)) if next_at else None,
        tenant=raw["tenant"],
        payload=raw["payload"],
    )


# KEYS: stream, delivery, job's deliveries, due. ARGV: group, msg id, retention s, created_at,
# then the delivery's fields. Makes the delivery (once, whatever the stream hands out twice),
# makes it due now, and acks and deletes the entry: one step, so no event is lost or doubled.
_ACCEPT = """
if redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('HSET', KEYS[2], unpack(ARGV, 5))
  redis.call('EXPIRE', KEYS[2], ARGV[3])
  local id = redis.call('HGET', KEYS[2], 'id')
  redis.call('ZADD', KEYS[3], ARGV[4], id)
  redis.call('EXPIRE', KEYS[3], ARGV[3])
  redis.call('ZADD', KEYS[4], ARGV[4], id)
end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
return 1
"""

# KEYS: due. ARGV: now, lease until, limit. The due deliveries, each leased (its time moved on).
_LEASE = """
local ids = redis.call('ZRANGE', KEYS[1], '-inf', ARGV[1], 'BYSCORE', 'LIMIT', 0, ARGV[3])
for _, id in ipairs(ids) do redis.call('ZADD', KEYS[1], ARGV[2], id) end
return ids
"""

# KEYS: delivery, due. ARGV: attempt (JSON), state, next attempt time ('' when none). Appends
# the attempt; a delivery that will try again stays due at that time, any other leaves the set.
_RECORD = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('ZREM', KEYS[2], ARGV[4])
  return 0
end
local attempts = cjson.decode(redis.call('HGET', KEYS[1], 'attempts') or '[]')
table.insert(attempts, cjson.decode(ARGV[1]))
redis.call('HSET', KEYS[1], 'attempts', cjson.encode(attempts), 'state', ARGV[2],
  'next_attempt_at', ARGV[3])
local id = redis.call('HGET', KEYS[1], 'id')
if ARGV[3] == '' then redis.call('ZREM', KEYS[2], id)
else redis.call('ZADD', KEYS[2], ARGV[3], id) end
return 1
"""

# KEYS: delivery, due. ARGV: now. One more attempt, now, with the same id.
_REDELIVER = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local attempts = cjson.decode(redis.call('HGET', KEYS[1], 'attempts') or '[]')
redis.call('HSET', KEYS[1], 'state', 'pending', 'max_attempts', #attempts + 1,
  'next_attempt_at', ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[1], redis.call('HGET', KEYS[1], 'id'))
return 1
"""


class Deliveries:
    """Delivery records. ``redis`` must decode responses (``common.redis.connect``)."""

    def __init__(self, redis: Redis, keys: Keys, *, lease_s: float = 60.0) -> None:
        self._redis = redis
        self._keys = keys
        self._lease_s = lease_s
        self._accept = redis.register_script(_ACCEPT)
        self._lease = redis.register_script(_LEASE)
        self._record = redis.register_script(_RECORD)
        self._redeliver = redis.register_script(_REDELIVER)

    async def accept(
        self, stream: str, group: str, msg_id: str, delivery: StoredDelivery, retention_s: int
    ) -> None:
        keys = self._keys
        fields: dict[str, Any] = {
            "id": delivery.id,
            "job_id": delivery.job_id,
            "type": delivery.type,
            "url": delivery.url,
            "state": delivery.state,
            "attempts": "[]",
            "max_attempts": delivery.max_attempts,
            "created_at": repr(delivery.created_at.timestamp()),
            "next_attempt_at": repr(delivery.created_at.timestamp()),
            "tenant": delivery.tenant,
            "payload": delivery.payload,
        }
        await self._accept(
            keys=[
                stream,
                keys.webhook_delivery(delivery.id),
                keys.webhook_deliveries(delivery.job_id),
                keys.webhook_due,
            ],
            args=[
                group,
                msg_id,
                retention_s,
                repr(delivery.created_at.timestamp()),
                *(item for pair in fields.items() for item in pair),
            ],
        )

    async def lease(self, now: float, limit: int) -> list[StoredDelivery]:
        """Up to ``limit`` deliveries due by ``now``, each this caller's for the lease."""
        ids: list[str] = await self._lease(
            keys=[self._keys.webhook_due], args=[repr(now), repr(now + self._lease_s), limit]
        )
        found = await self._many(ids)
        missing = {i for i in ids} - {d.id for d in found}
        if missing:  # expired records: nothing left to send
            await self._redis.zrem(self._keys.webhook_due, *missing)
        return found

    async def next_due_at(self) -> float | None:
        first = await self._redis.zrange(self._keys.webhook_due, 0, 0, withscores=True)
        return float(first[0][1]) if first else None

    async def record(
        self,
        delivery: StoredDelivery,
        attempt: Attempt,
        state: DeliveryState,
        next_at: float | None,
    ) -> None:
        await self._record(
            keys=[self._keys.webhook_delivery(delivery.id), self._keys.webhook_due],
            args=[
                attempt.model_dump_json(),
                state,
                "" if next_at is None else repr(next_at),
                delivery.id,
            ],
        )

    async def redeliver(self, delivery_id: str, now: float) -> bool:
        done = await self._redeliver(
            keys=[self._keys.webhook_delivery(delivery_id), self._keys.webhook_due],
            args=[repr(now)],
        )
        return bool(done)

    async def get(self, delivery_id: str) -> StoredDelivery | None:
        found = await self._many([delivery_id])
        return found[0] if found else None

    async def for_job(self, job_id: str) -> list[StoredDelivery]:
        ids = await self._redis.zrange(self._keys.webhook_deliveries(job_id), 0, -1)
        return await self._many([str(i) for i in ids])

    async def mark_gone(self, tenant: str, url: str, ttl_s: int) -> None:
        await self._redis.set(self._keys.webhook_gone(tenant, url_digest(url)), "410", ex=ttl_s)

    async def is_gone(self, tenant: str, url: str) -> bool:
        return bool(await self._redis.exists(self._keys.webhook_gone(tenant, url_digest(url))))

    async def _many(self, ids: list[str]) -> list[StoredDelivery]:
        if not ids:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for delivery in ids:
                pipe.hgetall(self._keys.webhook_delivery(delivery))
            raws: list[dict[str, str]] = await pipe.execute()
        return [parse_delivery(raw) for raw in raws if raw]
