"""The result cache: a request that names its seed renders the same bytes every time, so a
finished result is kept under a digest of exactly what made it, and an identical request is
answered from it without a GPU.

What made a result is two halves, known in two places. The gateway knows the request: tenant
(unless the cache is shared), route, task, every render parameter after defaults, the seed, the
input image's bytes (``request_digest``; on the job as ``JobSpec.cache_request``). The worker
knows how it renders the route: weights and their revision, LoRAs and scales, dtype, device,
library versions (its render fingerprint, ``gpu_worker.fingerprint``, published with its
heartbeat). The worker that renders a job joins the two (``entry_digest``); the uploader stores
the result under it once the job completes; the gateway looks a request up under each
fingerprint the route's live workers publish. A changed fingerprint is a different key: old
entries are never found again and expire.
"""

from __future__ import annotations

import hashlib
import json

from pydantic import BaseModel
from redis.asyncio import Redis

from common.keys import Keys
from common.schemas import RenderParams, Task

# Part of every digest: bump it when what a digest covers changes, so old entries go unused.
DIGEST_VERSION = 1
# The message of a job answered from the cache.
SERVED_FROM_CACHE = "Served from cache"


class CachedResult(BaseModel):
    """A ``cache:<digest>`` entry: the job that rendered the result and its stored objects."""

    job_id: str
    keys: list[str]


def request_digest(
    *,
    tenant: str | None,
    model: str,
    task: Task,
    params: RenderParams,
    image: bytes | None,
) -> str:
    """The request's half of a cache key. ``tenant`` ``None``: shared by every tenant."""
    canonical = {
        "v": DIGEST_VERSION,
        "tenant": tenant,
        "model": model,
        "task": task.value,
        "params": params.model_dump(mode="json"),
        "image_sha256": None if image is None else hashlib.sha256(image).hexdigest(),
    }
    return _sha256(json.dumps(canonical, sort_keys=True, separators=(",", ":")))


def entry_digest(request: str, fingerprint: str) -> str:
    """The cache key's digest: a request rendered by pipelines of this fingerprint."""
    return _sha256(f"{request}:{fingerprint}")


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class ResultCache:
    """The entries in Redis: written by the uploader, read by the gateway."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self._redis = redis
        self._keys = keys

    async def record(self, digest: str, result: CachedResult, *, ttl_s: int | None) -> None:
        """Keep ``result`` under ``digest``, for ``ttl_s`` seconds (``None``: until deleted)."""
        await self._redis.set(self._keys.result_cache(digest), result.model_dump_json(), ex=ttl_s)

    async def find(self, digests: list[str]) -> tuple[str, CachedResult] | None:
        """The first of ``digests`` with an entry, and the entry; one round trip."""
        if not digests:
            return None
        found = await self._redis.mget([self._keys.result_cache(d) for d in digests])
        for digest, raw in zip(digests, found, strict=True):
            if raw is not None:
                return digest, CachedResult.model_validate_json(raw)
        return None

    async def forget(self, digest: str) -> None:
        await self._redis.delete(self._keys.result_cache(digest))
