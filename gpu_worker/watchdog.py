"""The render watchdog's clock: how long the render thread has gone without a denoising step.

A render that makes no step for its route's ``stall_timeout_s`` is stuck: a hung CUDA call or a
deadlocked kernel, which no Python code can interrupt. The worker's event loop reads this clock
every ``WATCHDOG_INTERVAL_S``; when it trips, the render's jobs go back to the group for another
worker and the worker reports itself not live, so Kubernetes restarts the process, the only way
to get the device back. A render that steps slowly but steadily never trips it.

A route's ``max_render_s`` is a hard limit on one pipeline call besides: the loop stops a
render past it at its next step, and its attempt fails.
"""

from __future__ import annotations

import time

WATCHDOG_INTERVAL_S = 1.0


class StepClock:
    """Started, ticked and stopped by the render thread, read by the event loop. The state is one
    tuple replaced whole, so neither side needs a lock."""

    def __init__(self) -> None:
        self._watch: tuple[float, float] | None = None  # (last sign of progress, allowed gap)
        self._limit: tuple[float, float] | None = None  # (call began, max_render_s)

    def start(self, stall_timeout_s: float, max_render_s: float | None = None) -> None:
        """A pipeline call begins (its weights already loaded: loading makes no steps)."""
        now = time.monotonic()
        self._watch = (now, stall_timeout_s)
        self._limit = None if max_render_s is None else (now, max_render_s)

    def tick(self) -> None:
        """A denoising step ended."""
        watch = self._watch
        if watch is not None:
            self._watch = (time.monotonic(), watch[1])

    def stop(self) -> None:
        self._watch = None
        self._limit = None

    def overrun_s(self) -> float | None:
        """How long the running call has taken, once past its route's ``max_render_s``."""
        limit = self._limit
        if limit is None:
            return None
        took_s = time.monotonic() - limit[0]
        return took_s if took_s > limit[1] else None

    def stalled_s(self) -> float | None:
        """How long the running render has gone without a step, once past its allowance."""
        watch = self._watch
        if watch is None:
            return None
        quiet_s = time.monotonic() - watch[0]
        return quiet_s if quiet_s > watch[1] else None
