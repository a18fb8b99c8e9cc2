"""A key's quotas at admission: its submit rate and the largest job it may submit.

The rate is a sliding minute kept in Redis (one sorted set per tenant, one script per request),
so every gateway replica counts the same requests and no burst slips between them: at most
``rate_per_min`` submits in any 60 seconds. Answers carry the IETF RateLimit fields
(draft-ietf-httpapi-ratelimit-headers-11): ``RateLimit-Policy: "per-minute";q=<limit>;w=60`` and
``RateLimit: "per-minute";r=<left>;t=<seconds>``, ``t`` being how long until the oldest counted
request stops counting; a refusal adds ``Retry-After`` with the same seconds.

Jobs at once (``max_queued``) and input bytes per tenant are checked where the job is written, in
the submit script (``common.jobs``), so the check and the write are one step.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass

from redis.asyncio import Redis

from common.cost import COST_UNIT, job_cost
from common.keys import Keys
from common.logging import get_logger
from common.schemas import RenderParams, Task
from common.tenants import KeyLimits
from gateway.errors import ApiError

log = get_logger(__name__)

RATE_WINDOW_S = 60
RATE_POLICY = "per-minute"
# Documented in the OpenAPI document on every submit answer that may carry them.
RATE_HEADERS_DOCS = {
    "RateLimit-Policy": 'The key\'s submit rate: `"per-minute";q=<requests>;w=60` '
    "(draft-ietf-httpapi-ratelimit-headers). Absent when the key has no rate limit.",
    "RateLimit": 'What is left of it: `"per-minute";r=<requests left>;t=<seconds>`, the seconds '
    "until the oldest counted request stops counting.",
}

# KEYS: the tenant's rate log. ARGV: limit, window ms, a member unique to this request.
# Returns {allowed (1/0), requests left, ms until the oldest counted request stops counting}.
# Redis's clock, not each replica's: replicas with skewed clocks still share one window.
_TAKE = """
local clock = redis.call('TIME')
local now_ms = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local limit, window_ms = tonumber(ARGV[1]), tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms - window_ms)
local used = redis.call('ZCARD', KEYS[1])
local allowed = 0
if used < limit then
  redis.call('ZADD', KEYS[1], now_ms, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], window_ms)
  used = used + 1
  allowed = 1
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local reset_ms = window_ms
if oldest[2] then reset_ms = tonumber(oldest[2]) + window_ms - now_ms end
return {allowed, limit - used, reset_ms}
"""


@dataclass(frozen=True)
class RateDecision:
    allowed: bool
    limit: int
    remaining: int
    reset_s: int

    def headers(self) -> dict[str, str]:
        return {
            "RateLimit-Policy": f'"{RATE_POLICY}";q={self.limit};w={RATE_WINDOW_S}',
            "RateLimit": f'"{RATE_POLICY}";r={self.remaining};t={self.reset_s}',
        }


class RateLimiter:
    def __init__(self, redis: Redis, keys: Keys) -> None:
        self._keys = keys
        self._take = redis.register_script(_TAKE)

    async def take(self, tenant: str, limit: int) -> RateDecision:
        """Count one submit request of ``tenant`` if it is within ``limit`` a minute."""
        allowed, remaining, reset_ms = await self._take(
            keys=[self._keys.rate(tenant)],
            args=[limit, RATE_WINDOW_S * 1000, uuid.uuid4().hex],
        )
        return RateDecision(
            allowed=bool(allowed),
            limit=limit,
            remaining=max(0, int(remaining)),
            # Whole seconds, rounded up: a client that waits this long finds room.
            reset_s=max(1, math.ceil(int(reset_ms) / 1000)),
        )


async def admit_rate(limiter: RateLimiter, tenant: str, limits: KeyLimits) -> dict[str, str]:
    """Count a submit request against the key's rate; its RateLimit headers, or a 429."""
    if limits.rate_per_min is None:
        return {}
    decision = await limiter.take(tenant, limits.rate_per_min)
    if decision.allowed:
        return decision.headers()
    log.info("quota.rate_limited", rate_per_min=decision.limit, retry_in_s=decision.reset_s)
    raise ApiError(
        429,
        "rate_limited",
        f"This key may make {decision.limit} submit requests a minute (rate_per_min) and has "
        f"made them; nothing was queued, retry in {decision.reset_s} s.",
        headers=decision.headers() | {"Retry-After": str(decision.reset_s)},
    )


def check_cost(limits: KeyLimits, task: Task, params: RenderParams) -> None:
    """A 422 naming the limit when the job costs more than the key's ``max_cost``."""
    if limits.max_cost is None:
        return
    cost = job_cost(params, task)
    if cost <= limits.max_cost:
        return
    log.info("quota.too_costly", cost=cost, max_cost=limits.max_cost)
    raise ApiError(
        422,
        "max_cost_exceeded",
        f"This job costs {cost:,.1f} {COST_UNIT} (width × height / 10⁶ × steps × frames × "
        f"renders); this key's max_cost is {limits.max_cost:,.1f}. Ask for fewer pixels, steps, "
        "frames or angles; nothing was queued.",
    )
