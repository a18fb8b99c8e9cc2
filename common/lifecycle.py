"""Signals become a stop event that loops check; a second signal exits at once."""

from __future__ import annotations

import asyncio
import os
import signal

from common.logging import get_logger

log = get_logger(__name__)


def stop_event_on_signals() -> asyncio.Event:
    """SIGTERM/SIGINT set the returned event (drain: finish the job in hand, then exit).
    A second signal means the operator wants out now."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        if stop.is_set():
            log.warning("shutdown.forced", signal=signal.Signals(signum).name)
            os._exit(1)
        log.info("shutdown.draining", signal=signal.Signals(signum).name)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    return stop
