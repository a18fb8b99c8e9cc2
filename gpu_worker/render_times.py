"""How long this worker's pipeline calls take lately, per route: its heartbeat publishes them and
the gateway turns them into queue ETAs (``common.queue_position``)."""

from __future__ import annotations

import threading

from common.schemas import RenderTiming

# Weight of the newest call in the moving averages: recent enough to follow a change of
# sizes or load, smooth enough that one odd call does not swing every ETA.
NEWEST_WEIGHT = 0.3


class RecentRenders:
    """Moving averages of call time and batch size by route; written from the render thread,
    read by the heartbeat on the loop."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._timings: dict[str, RenderTiming] = {}

    def observe(self, route: str, render_s: float, batch_size: int) -> None:
        with self._lock:
            old = self._timings.get(route)
            if old is None:
                self._timings[route] = RenderTiming(render_s=render_s, batch_size=batch_size)
                return
            self._timings[route] = RenderTiming(
                render_s=_blend(old.render_s, render_s),
                batch_size=_blend(old.batch_size, batch_size),
            )

    def snapshot(self) -> dict[str, RenderTiming]:
        with self._lock:
            return dict(self._timings)


def _blend(old: float, new: float) -> float:
    return round(old + NEWEST_WEIGHT * (new - old), 4)
