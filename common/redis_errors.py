"""Which Redis failures are transient: every loop backs off and carries on through these.

Lost connections and timeouts, and the error *replies* a healthy deployment sends during trouble:
OOM (``maxmemory`` reached), READONLY (a primary demoted in a failover), UNBLOCKED (a blocking
read cut short by that demotion), LOADING (a restart reading its data), BUSY (a slow script),
MASTERDOWN, TRYAGAIN and NOSCRIPT (scripts lost in a restart; redis-py loads them again on the
next call). Any other error reply is a bug: it is
raised and logged, never retried blindly.
"""

from __future__ import annotations

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
