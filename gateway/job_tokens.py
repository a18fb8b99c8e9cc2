"""Read-only job tokens: a page follows one job without holding the API key.

A browser's ``EventSource`` cannot send headers, and a key in a URL leaks into logs and history.
So each job has a capability: ``HMAC-SHA256(secret, job id)``, returned in the
``Darkroom-Job-Token`` header of every submit and by ``GET /v1/jobs/{job_id}/token`` (its owner
only), and accepted as ``?token=`` on that job's status and events routes only. It reads, never
cancels or submits, and it lives as long as the job: once the record expires the routes answer 404
whatever the token.

The secret is made once, in Redis (``SET NX``), so every gateway replica signs alike with nothing
to configure; deleting it (and restarting the gateways) voids every token.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets

from pydantic import BaseModel, Field
from redis.asyncio import Redis

from common.keys import Keys

HEADER = "Darkroom-Job-Token"
QUERY_PARAM = "token"
PREFIX = "djt_"
SECRET_BYTES = 32
# The routes a token opens, each with its job id in the first group; nothing else.
READ_ROUTES = (
    re.compile(r"^/api/(?P<job_id>[^/]+)/(?:status|events)$"),
    re.compile(r"^/v1/jobs/(?P<job_id>[^/]+)(?:/events)?$"),
)


class JobToken(BaseModel):
    """A job's read-only token: pass it as ``?token=`` to the job's status and events routes
    (an ``EventSource`` cannot send headers). It reads only this job, and only while the job's
    record lives."""

    job_id: str
    token: str = Field(description="Also returned in the Darkroom-Job-Token header on submit.")


def job_of_read_route(path: str) -> str | None:
    """The job id when ``path`` is one of a job's read routes, else ``None``."""
    for pattern in READ_ROUTES:
        found = pattern.match(path)
        if found:
            return found["job_id"]
    return None


class JobTokens:
    """Signs and checks job tokens with the one secret all replicas share (read once, lazily: a
    gateway starts while Redis is down, and the first request that needs it pays one GET)."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self._redis = redis
        self._keys = keys
        self._secret: bytes | None = None

    async def _key(self) -> bytes:
        if self._secret is None:
            fresh = secrets.token_hex(SECRET_BYTES)
            await self._redis.set(self._keys.job_token_secret, fresh, nx=True)
            stored = await self._redis.get(self._keys.job_token_secret)
            if stored is None:  # deleted between the two calls: use what this replica wrote
                stored = fresh
            self._secret = stored.encode() if isinstance(stored, str) else stored
        return self._secret

    async def issue(self, job_id: str) -> str:
        mac = hmac.new(await self._key(), job_id.encode(), hashlib.sha256).digest()
        return PREFIX + base64.urlsafe_b64encode(mac).rstrip(b"=").decode()

    async def valid(self, job_id: str, token: str) -> bool:
        # As bytes: compare_digest refuses str with non-ASCII characters.
        return hmac.compare_digest((await self.issue(job_id)).encode(), token.encode())
