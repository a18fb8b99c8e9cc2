"""``Idempotency-Key``: a retried submit gets the job the first attempt made, never a second one.

The record lives in Redis (``keys.idempotency``), so it holds across gateway replicas. A submit
first *claims* the key with ``SET NX`` (short TTL, state ``pending``); the job is then written in
one transaction with the key's *committed* record (full TTL), and only while the claim still holds
(``JobStore.submit(claim=...)``). So a key either made its job and says so, or made nothing: a
gateway dying at any point leaves no job without its key nor a key without its job. A concurrent
submit with the same key loses the ``SET NX`` and waits, with a deadline, for the winner to
commit or give the key back, so one key makes one job.

A key is remembered longer (``idempotency_ttl_s``, 24 h) than a finished job's record
(``task_ttl_s``, 1 h): a replay whose job has expired answers 410 ``idempotency_job_expired``,
naming the job, rather than an id that no status read can find. The key keeps that answer until
it expires itself; a new request needs a new key.
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
from common.jobs import KeyClaim
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
    "request is a 409 `idempotency_key_reused`. Keys are remembered for 24 hours by default; "
    "a replay after the original job finished and expired (TASK_TTL) is a 410 "
    "`idempotency_job_expired`."
}
# A claim lives this long unless committed, so a gateway that dies mid-submit frees its key.
CLAIM_TTL_S = 60
# How long a duplicate waits for the first submit with its key to finish before giving up.
IN_FLIGHT_WAIT_S = 5.0
IN_FLIGHT_POLL_S = 0.02
IN_FLIGHT_RETRY_AFTER_S = 1

# Compare-and-delete on the whole record: only the claim's owner may release it.
_RELEASE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
return redis.call('DEL', KEYS[1])
"""


class ClaimState(StrEnum):
    PENDING = "pending"
    COMMITTED = "committed"


class IdempotencyRecord(BaseModel):
    """The ``idem:<key>`` string: which job a key made, and a digest of the request that made it."""

    # Or the batch's, for a batch submit: one key covers the whole batch.
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

    def __init__(self, redis: Redis, keys: Keys, tenant: str, key: str, *, ttl_s: int) -> None:
        self._redis = redis
        self._keys = keys
        # Per tenant: another tenant's same key is another key, and makes its own job.
        self._name = keys.idempotency(tenant, key)
        self._key = key
        self._ttl_s = ttl_s
        self._held: IdempotencyRecord | None = None
        self._release = redis.register_script(_RELEASE)

    async def claim(self, fingerprint: str, job_id: str, *, batch: bool = False) -> str | None:
        """``None`` when this request now holds the key and should enqueue ``job_id``; otherwise
        the id of the job an earlier request with the same key and fingerprint made. With
        ``batch`` the id is a batch's (``common.batches``): one key covers the whole batch.

        Raises 409 when the key was used for a different request, or when the request holding it
        neither finished nor gave it back within ``IN_FLIGHT_WAIT_S``; 410 when the key's job
        has expired.
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
                # Committed means queued (one transaction); pending means not queued yet.
                if found.state == ClaimState.COMMITTED:
                    record = self._keys.batch if batch else self._keys.job
                    if not await self._redis.exists(record(found.job_id)):
                        raise self._job_expired(found.job_id, "batch" if batch else "job")
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

    def commit_with_job(self) -> KeyClaim:
        """The claim, for the job's write to check and commit in the same transaction."""
        held = self._holding()
        done = held.model_copy(update={"state": ClaimState.COMMITTED})
        return KeyClaim(self._name, held.model_dump_json(), done.model_dump_json(), self._ttl_s)

    async def release(self) -> None:
        """Nothing was queued: free the key for the next attempt (if it is still ours)."""
        held = self._holding()
        self._held = None
        await self._release(keys=[self._name], args=[held.model_dump_json()])

    def expired(self) -> ApiError:
        """The claim ran out before the job could be written (a submit slower than
        ``CLAIM_TTL_S``): nothing was queued; the client should retry."""
        log.warning("idempotency.claim_expired", key=self._key)
        return ApiError(
            409,
            "idempotency_key_in_flight",
            f"The request with {HEADER} {self._key!r} took too long and was not queued; "
            f"retry in {IN_FLIGHT_RETRY_AFTER_S} s.",
            headers={"Retry-After": str(IN_FLIGHT_RETRY_AFTER_S)},
        )

    def _job_expired(self, job_id: str, what: str) -> ApiError:
        log.info("idempotency.job_expired", key=self._key, job_id=job_id)
        return ApiError(
            410,
            "idempotency_job_expired",
            f"{HEADER} {self._key!r} made {what} {job_id}, which has since finished and expired: "
            "its status and results are no longer kept. Nothing was queued; send a new key to "
            "submit the request again.",
        )

    def _holding(self) -> IdempotencyRecord:
        if self._held is None:
            raise RuntimeError("no claim held")
        return self._held
