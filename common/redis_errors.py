"""Which Redis failures are transient: every loop backs off and carries on through these.

Lost connections and timeouts, and the error *replies* a healthy deployment sends during trouble:
OOM (``maxmemory`` reached), READONLY (a primary demoted in a failover), UNBLOCKED (a blocking
read cut short by that demotion), LOADING (a restart reading its data), BUSY (a slow script),
MASTERDOWN, TRYAGAIN and NOSCRIPT (scripts lost in a restart; redis-py loads them again on the
next call). Any other error reply is a bug: it is
raised and logged, never retried blindly.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable
from typing import TypeVar

from redis._parsers.base import BaseParser
from redis.exceptions import (
    BusyLoadingError,
    MasterDownError,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from common.logging import get_logger

log = get_logger(__name__)
T = TypeVar("T")

# How long a loop waits after its n-th failure in a row before trying Redis again.
RECONNECT_BACKOFF_S = (0.1, 0.5, 1.0, 2.0, 5.0)


class ScriptBusyError(ResponseError):
    """BUSY: Redis is running a script past its time limit and answers nothing else."""


class ForcedUnblockError(ResponseError):
    """UNBLOCKED: a blocking read was ended by the server changing role (primary → replica)."""


# redis-py maps each reply's error code to a class but has none for these; register them, so
# they can be caught by class like the others.
BaseParser.EXCEPTION_CLASSES.setdefault("BUSY", ScriptBusyError)
BaseParser.EXCEPTION_CLASSES.setdefault("UNBLOCKED", ForcedUnblockError)

# Errors that mean "Redis cannot do this right now": back off and try again.
REDIS_TRANSIENT: tuple[type[Exception], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    OSError,
    BusyLoadingError,
    OutOfMemoryError,
    ReadOnlyError,
    ScriptBusyError,
    ForcedUnblockError,
    MasterDownError,
    TryAgainError,
    NoScriptError,
)


def describe(exc: BaseException) -> str:
    """A short, stable name for logs and readiness: ``OutOfMemoryError: OOM command not…``."""
    return f"{type(exc).__name__}: {exc}"


def backoff_s(failures: int) -> float:
    """The wait after ``failures`` failures in a row (the first is 0)."""
    return RECONNECT_BACKOFF_S[min(failures, len(RECONNECT_BACKOFF_S) - 1)]


async def retry_transient(
    call: Callable[[], Awaitable[T]],
    *,
    for_s: float,
    still_wanted: Callable[[], bool] = lambda: True,
    event: str = "redis.retry",
) -> T:
    """``call()`` again, backing off, while Redis refuses it for a transient reason, for up to
    ``for_s`` and while ``still_wanted()``; then the last error is raised. For work already done
    and held in memory (a rendered image, a stored object), so a short outage does not throw it
    away. ``call`` must be safe to repeat; each retry is logged as ``event``."""
    loop = asyncio.get_running_loop()
    give_up_at = loop.time() + for_s
    for failures in itertools.count():
        try:
            return await call()
        except REDIS_TRANSIENT as exc:
            delay_s = backoff_s(failures)
            if loop.time() + delay_s > give_up_at or not still_wanted():
                raise
            log.warning(event, error=describe(exc), retry_in_s=delay_s)
            await asyncio.sleep(delay_s)
    raise AssertionError("unreachable")
