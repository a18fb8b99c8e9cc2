"""Whether storage takes the uploader's writes, for its ``/readyz``.

A permanent refusal (AccessDenied, NoSuchBucket, InvalidAccessKeyId…) fails every job at once, so
the uploader is not ready while it lasts: ``/readyz`` answers 503 naming the bucket and the error
code. It is ready again by itself after the next successful PUT: a job's, or the probe's. While
refused, the probe PUTs a few bytes under one fixed key every ``PROBE_INTERVAL_S``: a write, because
a HEAD of the bucket passes with credentials that may read but not write, and only while refused,
so a healthy uploader adds no requests. Without the probe an uploader nobody sends work to would
stay red after the operator fixed the policy.
"""

from __future__ import annotations

import asyncio

from common.consumer import sleep_unless
from common.logging import get_logger
from uploader.storage import Storage, StorageError

log = get_logger(__name__)

# How often a refused uploader tries storage again on its own.
PROBE_INTERVAL_S = 5.0
# One small object, overwritten by every probe of every uploader: it never piles up.
PROBE_KEY = "darkroom-probe/uploader"
PROBE_BODY = b"darkroom uploader write probe\n"


class StorageHealth:
    def __init__(self, storage: Storage, bucket: str | None) -> None:
        self._storage = storage
        self._bucket = bucket
        self._refusal: StorageError | None = None
        self._probed = asyncio.Event()  # set when a refusal starts: the probe loop wakes

    @property
    def refused(self) -> bool:
        return self._refusal is not None

    def readiness(self) -> tuple[bool, str]:
        if self._refusal is None:
            return True, ""
        return False, f"storage refuses writes: {self._refusal.summary}"

    def details(self) -> dict[str, object]:
        """Added to the ``/readyz`` body while refused, for machines: bucket and error code."""
        if self._refusal is None:
            return {}
        return {"storage": {"bucket": self._bucket, "error": self._refusal.code}}

    def refusing(self, exc: StorageError) -> None:
        """A write was refused for good (``exc.retryable`` is False)."""
        if self._refusal is None:
            log.warning("storage.refusing", error=exc.summary, code=exc.code)
        self._refusal = exc
        self._probed.set()

    def accepting(self) -> None:
        """A write succeeded: storage takes writes (again)."""
        if self._refusal is not None:
            log.info("storage.accepting", after=self._refusal.code)
        self._refusal = None
        self._probed.clear()

    async def probe_while_refused(self, stop: asyncio.Event) -> None:
        """Until ``stop``: while refused, try one small PUT every ``PROBE_INTERVAL_S``."""
        while not stop.is_set():
            if self._refusal is None:
                waiting = asyncio.ensure_future(self._probed.wait())
                stopping = asyncio.ensure_future(stop.wait())
                await asyncio.wait({waiting, stopping}, return_when=asyncio.FIRST_COMPLETED)
                waiting.cancel()
                stopping.cancel()
                continue
            await sleep_unless(stop, PROBE_INTERVAL_S)
            if stop.is_set() or self._refusal is None:
                continue
            try:
                await self._storage.put(PROBE_KEY, PROBE_BODY, "text/plain")
            except StorageError as exc:
                if not exc.retryable:
                    self._refusal = exc  # the latest reason (NoSuchBucket may become AccessDenied)
                log.info("storage.probe_refused", error=exc.summary)
            else:
                self.accepting()
