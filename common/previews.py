"""A rendering job's live previews in Redis: only the latest is kept, under a short TTL, and each
is announced once over pub/sub. Previews never enter the job's event log, so they cost Redis one
small string per rendering job, are never replayed, and leave ``Last-Event-ID`` alone.
"""

from __future__ import annotations

from pydantic import BaseModel, Field
from redis.asyncio import Redis

from common.keys import Keys

# The latest preview outlives its render by at most this long, should the worker that wrote it
# die before deleting it; a live render rewrites it every half second or so.
PREVIEW_TTL_S = 30


class Preview(BaseModel):
    """The ``data`` of an ``event: preview`` SSE frame."""

    step: int = Field(ge=0, description="Denoising steps done when the latents were taken.")
    total_steps: int = Field(ge=1, description="Steps of the whole job (every render of it).")
    image: str = Field(description="A data:image/jpeg;base64 URI, longest side at most 256 px.")


class PreviewStore:
    def __init__(self, redis: Redis, keys: Keys, *, ttl_s: int = PREVIEW_TTL_S) -> None:
        self._redis = redis
        self._keys = keys
        self._ttl_s = ttl_s

    async def publish(self, job_id: str, preview: Preview) -> None:
        """Keep it as the job's latest and tell the feeds watching the job, in one round trip."""
        data = preview.model_dump_json()
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(self._keys.preview(job_id), data, ex=self._ttl_s)
            pipe.publish(self._keys.preview_channel(job_id), data)
            await pipe.execute()

    async def latest(self, job_id: str) -> str | None:
        """The latest preview's JSON, while the job renders."""
        data: str | bytes | None = await self._redis.get(self._keys.preview(job_id))
        return data.decode() if isinstance(data, bytes) else data

    async def clear(self, job_id: str) -> None:
        """The render ended: a feed opened from now on gets no preview."""
        await self._redis.delete(self._keys.preview(job_id))
