"""``Idempotency-Key``: a retried submit gets the job the first attempt made, never a second one.

The record lives in Redis (``keys.idempotency``), so it holds across gateway replicas. A submit
first *claims* the key with ``SET NX`` (short TTL, state ``pending``), enqueues, then *commits* it
(full TTL). A concurrent submit with the same key loses the ``SET NX`` and waits, with a deadline,
for the winner to commit or give the key back, so one key makes one job.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from enum import StrEnum

from pydantic import BaseModel
from redis.asyncio import Redis
from starlette.requests import Request

from common.catalog import ModelRoute
from common.keys import Keys
from common.logging import get_logger
from common.schemas import Task
from gateway.errors import ApiError, field_error

log = get_logger(__name__)

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
MAX_KEY_CHARS = 255
HEADER_DOCS = {
    HEADER: f"Up to {MAX_KEY_CHARS} characters (a UUID is typical). Sending the same key with "
    "the same request again returns the original job (same id and body, status 200, with an "
    f"`{REPLAYED_HEADER}: true` header) and queues nothing; the same key with a different "
    "request is a 409 `idempotency_key_reused`. Keys are remembered for 24 hours by default."
}
# A claim lives this long unless committed, so a gateway that dies mid-submit frees its key.
CLAIM_TTL_S = 60
# How long a duplicate waits for the first submit with its key to finish before giving up.
IN_FLIGHT_WAIT_S = 5.0
IN_FLIGHT_POLL_S = 0.02
IN_FLIGHT_RETRY_AFTER_S = 1

# Compare-and-set on the whole record: only the claim's owner may commit or release it.
_COMMIT = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
return 1
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
return redis.call('DEL', KEYS[1])
"""


class ClaimState(StrEnum):
    PENDING = "pending"
    COMMITTED = "committed"


class IdempotencyRecord(BaseModel):
    """The ``idem:<key>`` string: which job a key made, and a digest of the request that made it."""

    job_id: str
    fingerprint: str
    state: ClaimState


def key_from_request(request: Request) -> str | None:
    """The request's ``Idempotency-Key``, or ``None`` without one; a 422 when it is unusable."""
    key = request.headers.get(HEADER)
    if key is None:
        return None
    if not key or len(key) > MAX_KEY_CHARS:
        raise field_error(HEADER, f"must be 1 to {MAX_KEY_CHARS} characters; got {len(key)}")
    return key


def replay_headers(replayed: bool) -> dict[str, str] | None:
    """Tells a client its retry found the original job rather than queueing a new one."""
    return {REPLAYED_HEADER: "true"} if replayed else None


def fingerprint(route: ModelRoute, task: Task, fields: BaseModel, image: bytes | None) -> str:
    """A digest of what the client asked for: the validated fields before any default is resolved
    (a random seed included), so a retry of the same request matches and nothing else does."""
    canonical = {
        "route": route.name,
        "task": task.value,
        "request": type(fields).__name__,
        "fields": fields.model_dump(mode="json"),
        "image_sha256": None if image is None else hashlib.sha256(image).hexdigest(),
    }
    return hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()


class Idempotency:
    """One request's key and its record."""

    def __init__(self, redis: Redis, keys: Keys, key: str, *, ttl_s: int) -> None:
        self._redis = redis
        self._keys = keys
        self._name = keys.idempotency(key)
        self._key = key
        self._ttl_s = ttl_s
        self._held: IdempotencyRecord | None = None
        self._commit = redis.register_script(_COMMIT)
        self._release = redis.register_script(_RELEASE)

    async def claim(self, fingerprint: str, job_id: str) -> str | None:
        """``None`` when this request now holds the key and should enqueue ``job_id``; otherwise
        the id of the job an earlier request with the same key and fingerprint made.

        Raises 409 when the key was used for a different request, or when the request holding it
        neither finished nor gave it back within ``IN_FLIGHT_WAIT_S``.
        """
        mine = IdempotencyRecord(job_id=job_id, fingerprint=fingerprint, state=ClaimState.PENDING)
        deadline = time.monotonic() + IN_FLIGHT_WAIT_S
        while True:
            if await self._redis.set(self._name, mine.model_dump_json(), nx=True, ex=CLAIM_TTL_S):
                self._held = mine
                return None
            raw = await self._redis.get(self._name)
            if raw is not None:  # else it was released or expired between SET and GET: retry
                found = IdempotencyRecord.model_validate_json(raw)
                if found.fingerprint != fingerprint:
                    raise ApiError(
                        409,
                        "idempotency_key_reused",
                        f"{HEADER} {self._key!r} was already used for a different request; "
                        "send a new key for a new request.",
                    )
                # A pending claim whose job exists was queued; only its commit is still to come.
                if found.state == ClaimState.COMMITTED or await self._redis.exists(
                    self._keys.job(found.job_id)
                ):
                    return found.job_id
            if time.monotonic() > deadline:
                raise ApiError(
                    409,
                    "idempotency_key_in_flight",
                    f"A request with {HEADER} {self._key!r} is still being submitted; "
                    f"retry in {IN_FLIGHT_RETRY_AFTER_S} s.",
                    headers={"Retry-After": str(IN_FLIGHT_RETRY_AFTER_S)},
                )
            await asyncio.sleep(IN_FLIGHT_POLL_S)

    async def commit(self) -> None:
        """The claimed job is queued: keep the key for the full TTL."""
        held = self._take()
        done = held.model_copy(update={"state": ClaimState.COMMITTED})
        args: list[str | int] = [held.model_dump_json(), done.model_dump_json(), self._ttl_s]
        if not await self._commit(keys=[self._name], args=args):
            # The claim expired before the job was queued (a very slow submit); the job stands,
            # but a retry with this key may now make a second one.
            log.warning("idempotency.claim_lost", key=self._key, job_id=held.job_id)

    async def release(self) -> None:
        """Nothing was queued: free the key for the next attempt."""
        held = self._take()
        await self._release(keys=[self._name], args=[held.model_dump_json()])

    def _take(self) -> IdempotencyRecord:
        if self._held is None:
            raise RuntimeError("commit or release without a claim")
        held, self._held = self._held, None
        return held
