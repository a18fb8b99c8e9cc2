"""The jobs a worker has read ahead of the render, and how they become batches.

The intake adds jobs as it reads them; the render stage takes a batch only when it is free to
render one. So a batch holds every compatible job that arrived while the previous one rendered,
not only those that happened to be waiting when it was read (a batch fixed at read time left
clients that resubmit as their results arrive in batches of 8, 7 and 1).

Reading pauses once the next batch is full (a route that renders one job at a time holds back
one job), or once ``limit`` jobs wait: a worker never keeps from the other workers jobs it
could not render next.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

J = TypeVar("J")


class WaitingJobs(Generic[J]):
    def __init__(
        self,
        *,
        limit: int,
        batch_key: Callable[[J], Hashable],
        max_batch: Callable[[J], int],
        rank: Callable[[J], int] = lambda job: 0,
    ) -> None:
        self._limit = max(1, limit)
        self._rank = rank
        self._batch_key = batch_key
        self._max_batch = max_batch
        self._jobs: list[J] = []  # oldest first
        self._closed = False
        self._changed = asyncio.Condition()

    def __len__(self) -> int:
        return len(self._jobs)

    async def add(self, jobs: list[J]) -> None:
        """Queue jobs for the render stage; returns when the intake may read again."""
        async with self._changed:
            self._jobs += jobs
            self._changed.notify_all()
            await self._changed.wait_for(self._room)

    def _room(self) -> bool:
        """Whether reading more could still add to the next batch."""
        if len(self._jobs) >= self._limit:
            return False
        if not self._jobs:
            return True
        first = self._jobs[0]
        key = self._batch_key(first)
        return sum(self._batch_key(job) == key for job in self._jobs) < self._max_batch(first)

    async def next_batch(self) -> list[J] | None:
        """The oldest job of the best rank (highest priority class) and the compatible ones that
        wait with it, best rank first, up to its batch size; ``None`` once closed with nothing
        left."""
        async with self._changed:
            await self._changed.wait_for(lambda: bool(self._jobs) or self._closed)
            if not self._jobs:
                return None
            first = min(self._jobs, key=self._rank)  # the first of the best rank: the oldest
            key, size = self._batch_key(first), self._max_batch(first)
            compatible = [job for job in self._jobs if self._batch_key(job) == key]
            batch = sorted(compatible, key=self._rank)[:size]
            taken = {id(job) for job in batch}
            self._jobs = [job for job in self._jobs if id(job) not in taken]
            self._changed.notify_all()
            return batch

    async def take_all(self) -> list[J]:
        """Every waiting job, taken out (to give back on shutdown)."""
        async with self._changed:
            jobs, self._jobs = self._jobs, []
            self._changed.notify_all()
            return jobs

    async def close(self) -> None:
        """No more jobs will come: ``next_batch`` ends once the waiting ones are taken."""
        async with self._changed:
            self._closed = True
            self._changed.notify_all()
