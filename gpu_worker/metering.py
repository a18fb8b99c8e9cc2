"""GPU time per job: a pipeline call's measured time, split between the jobs it rendered.

Time is cut at every denoising step. Each slice is shared by the jobs still rendering when it
began, in proportion to their cost (``common.cost``): a job canceled half-way through a batch pays
for the steps it rendered, and the jobs that went on pay for the rest. Time before the first step
(text encoding) and after the last (VAE decoding) is shared the same way.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class GpuMeter:
    """Called from the render thread (``start``, ``step``, ``stop``); read on the loop once the
    call has returned."""

    def __init__(self, costs: list[float], clock: Callable[[], float] = time.perf_counter) -> None:
        # A job of no cost still shares what it was part of.
        self._costs = [max(cost, 1e-9) for cost in costs]
        self._seconds = [0.0] * len(costs)
        self._live = [True] * len(costs)
        self._last: float | None = None
        self._lock = threading.Lock()
        self._clock = clock

    def start(self) -> None:
        with self._lock:
            self._last = self._clock()

    def step(self, live: list[bool]) -> None:
        """After a step: charge the time since the last one; ``live`` says which jobs render on
        from here (those that stopped pay nothing more)."""
        with self._lock:
            self._lap()
            self._live = list(live)

    def stop(self) -> None:
        with self._lock:
            self._lap()
            self._last = None

    @property
    def seconds(self) -> list[float]:
        """Each job's share so far, in the order of the costs."""
        with self._lock:
            return list(self._seconds)

    def _lap(self) -> None:
        if self._last is None:
            return
        now = self._clock()
        elapsed_s, self._last = now - self._last, now
        # When every job stopped, the slice that found out is theirs all the same.
        payers = [i for i, live in enumerate(self._live) if live] or list(range(len(self._costs)))
        total = sum(self._costs[i] for i in payers)
        for i in payers:
            self._seconds[i] += elapsed_s * self._costs[i] / total
