"""Usage accounting: what each tenant's finished jobs took, per UTC day, kept for a retention
period. ``GET /v1/usage`` reads it.

One hash per tenant and day (``Keys.usage``): ``jobs:<model>:<task>:<outcome>`` counts,
``gpu_s`` (measured render time), ``output_bytes`` (stored results) and ``cost`` (megapixel-steps
of the completed jobs, ``common.cost``). A job is added exactly once, by the change that ends it
(``RECORD_USAGE_LUA``, run inside ``JobStore.emit``'s terminal transition, which happens once).
GPU time is first summed on the job record (``UsageStore.charge_gpu``, once per render, however
often the call is retried); a render charged after its job ended (a canceled job's worker
stopping at its next step) goes straight to the day the job was counted on.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta

from pydantic import BaseModel, Field
from redis.asyncio import Redis

from common.keys import Keys
from common.schemas import TERMINAL_STATUSES
from common.tenants import LOCAL_TENANT

# How long a day's usage stays readable; long enough to compare with the same month last year.
USAGE_RETENTION_DAYS = 400
SECONDS_PER_DAY = 24 * 3600
# The fields of ``RouteUsage`` that count jobs: a job's terminal status.
OUTCOMES = tuple(sorted(status.value for status in TERMINAL_STATUSES))

# A Lua function for JobStore's terminal transition: add the ending job to its tenant's day.
# record_usage(job key, terminal status, usage key prefix, day, retention in seconds). The day
# is noted on the record, so GPU time charged later lands on the same day.
RECORD_USAGE_LUA = f"""
local function record_usage(job, status, prefix, day, ttl_s)
  local u = redis.call('HMGET', job, 'tenant', 'model', 'task', 'gpu_s', 'output_bytes', 'cost')
  local key = prefix .. (u[1] or '{LOCAL_TENANT}') .. ':' .. day
  redis.call('HINCRBY', key, 'jobs:' .. u[2] .. ':' .. u[3] .. ':' .. status, 1)
  if u[4] then redis.call('HINCRBYFLOAT', key, 'gpu_s', u[4]) end
  if u[5] then redis.call('HINCRBY', key, 'output_bytes', u[5]) end
  if u[6] and status == 'completed' then redis.call('HINCRBYFLOAT', key, 'cost', u[6]) end
  redis.call('EXPIRE', key, ttl_s)
  redis.call('HSET', job, 'usage_day', day)
end
"""

# KEYS: jobs. ARGV: usage key prefix, retention in seconds, then per job: GPU seconds, render
# token. Once per token: a retried call (a lost reply) charges nothing more. Returns 1 for each
# job charged, 0 for one unknown or charged already.
_CHARGE_GPU = f"""
local out = {{}}
for i, job in ipairs(KEYS) do
  local gpu_s, token = ARGV[1 + 2 * i], ARGV[2 + 2 * i]
  local cur = redis.call('HMGET', job, 'job_id', 'tenant', 'usage_day')
  if not cur[1] or redis.call('HSETNX', job, 'charged:' .. token, gpu_s) == 0 then
    out[i] = 0
  else
    redis.call('HINCRBYFLOAT', job, 'gpu_s', gpu_s)
    if cur[3] then
      local key = ARGV[1] .. (cur[2] or '{LOCAL_TENANT}') .. ':' .. cur[3]
      redis.call('HINCRBYFLOAT', key, 'gpu_s', gpu_s)
      redis.call('EXPIRE', key, ARGV[2])
    end
    out[i] = 1
  end
end
return out
"""


def usage_day(ts: float) -> str:
    """The UTC day a Unix time falls on, as usage keys name it (``YYYY-MM-DD``)."""
    return datetime.fromtimestamp(ts, UTC).date().isoformat()


def today() -> date:
    return datetime.now(UTC).date()


def render_token() -> str:
    """Names one render of a job, so its GPU time is charged once."""
    return uuid.uuid4().hex


class RouteUsage(BaseModel):
    """Finished jobs on one route and task, by outcome."""

    model: str
    task: str
    completed: int = 0
    failed: int = 0
    canceled: int = 0


class UsageTotals(BaseModel):
    jobs: list[RouteUsage] = Field(
        default_factory=list, description="Finished jobs by route (model and task) and outcome."
    )
    gpu_s: float = Field(
        default=0.0,
        description="Render time measured by the workers, in seconds: a batch's time is split "
        "between its jobs in proportion to their cost; a canceled job pays for the steps it "
        "rendered; a failed render is not charged.",
    )
    output_bytes: int = Field(default=0, description="Bytes of the results stored.")
    cost_megapixel_steps: float = Field(
        default=0.0,
        description="Cost of the completed jobs: width × height × steps × frames × renders / 10⁶.",
    )


class DayUsage(UsageTotals):
    date: date


class UsageReport(BaseModel):
    """A tenant's usage over a range of UTC days, both ends included: the totals, and each day
    that had any."""

    tenant: str
    from_: date = Field(alias="from", description="First UTC day, included.")
    to: date = Field(description="Last UTC day, included.")
    total: UsageTotals
    days: list[DayUsage] = Field(description="Days with usage, oldest first.")


Counts = dict[tuple[str, str, str], int]  # (model, task, outcome) -> jobs


def _routes(counts: Counts) -> list[RouteUsage]:
    routes: dict[tuple[str, str], RouteUsage] = {}
    for (model, task, outcome), n in sorted(counts.items()):
        route = routes.setdefault((model, task), RouteUsage(model=model, task=task))
        setattr(route, outcome, getattr(route, outcome) + n)
    return list(routes.values())


def _parse_day(day: date, raw: dict[str, str]) -> DayUsage:
    counts: Counts = {}
    for field, value in raw.items():
        if field.startswith("jobs:"):
            # Model names are free text; the task and the outcome are not: split from the right.
            model, task, outcome = field.removeprefix("jobs:").rsplit(":", 2)
            if outcome in OUTCOMES:
                counts[model, task, outcome] = int(value)
    return DayUsage(
        date=day,
        jobs=_routes(counts),
        gpu_s=float(raw.get("gpu_s", 0.0)),
        output_bytes=int(raw.get("output_bytes", 0)),
        cost_megapixel_steps=float(raw.get("cost", 0.0)),
    )


def _total(days: list[DayUsage]) -> UsageTotals:
    counts: Counts = {}
    for day in days:
        for route in day.jobs:
            for outcome in OUTCOMES:
                key = (route.model, route.task, outcome)
                counts[key] = counts.get(key, 0) + getattr(route, outcome)
    return UsageTotals(
        jobs=_routes(counts),
        gpu_s=sum(day.gpu_s for day in days),
        output_bytes=sum(day.output_bytes for day in days),
        cost_megapixel_steps=sum(day.cost_megapixel_steps for day in days),
    )


class UsageStore:
    """Charges render time to jobs and reads tenants' usage. ``redis`` must decode responses."""

    def __init__(
        self, redis: Redis, keys: Keys, *, retention_days: int = USAGE_RETENTION_DAYS
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._retention_s = retention_days * SECONDS_PER_DAY
        self._charge_gpu = redis.register_script(_CHARGE_GPU)

    async def charge_gpu(self, job_id: str, gpu_s: float, token: str) -> bool:
        """Add one render's GPU time to its job, once per ``token`` (``render_token``); to the
        tenant's day as well when the job has ended already. ``False``: nothing added (an
        unknown job, or this token was charged already)."""
        (charged,) = await self.charge_gpu_all([(job_id, gpu_s, token)])
        return charged

    async def charge_gpu_all(self, charges: Sequence[tuple[str, float, str]]) -> list[bool]:
        """``charge_gpu`` for several renders (job id, GPU seconds, token) in one round trip."""
        if not charges:
            return []
        args: list[str | int] = [self._keys.usage_prefix, self._retention_s]
        for _, gpu_s, token in charges:
            args += [f"{gpu_s:.6f}", token]
        charged = await self._charge_gpu(
            keys=[self._keys.job(job_id) for job_id, _, _ in charges], args=args
        )
        return [bool(one) for one in charged]

    async def read(self, tenant: str, first: date, last: date) -> UsageReport:
        """The tenant's usage from ``first`` to ``last``, both included: one round trip."""
        days = [first + timedelta(days=n) for n in range((last - first).days + 1)]
        async with self._redis.pipeline(transaction=False) as pipe:
            for day in days:
                pipe.hgetall(self._keys.usage(tenant, day.isoformat()))
            found: list[dict[str, str]] = await pipe.execute()
        used = [_parse_day(day, raw) for day, raw in zip(days, found, strict=True) if raw]
        return UsageReport.model_validate(
            {"tenant": tenant, "from": first, "to": last, "total": _total(used), "days": used}
        )
