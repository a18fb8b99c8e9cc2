"""The one way services connect to Redis: retries on connection loss, health checks, timeouts."""

from __future__ import annotations

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

import common.redis_errors  # noqa: F401  # registers the BUSY reply class before any client parses
from common.settings import CommonSettings

CONNECT_TIMEOUT_S = 5.0
HEALTH_CHECK_INTERVAL_S = 15
# Connections per client; a burst beyond waits for one to come back instead of failing.
MAX_CONNECTIONS = 100
POOL_WAIT_S = 10.0


def connect(settings: CommonSettings, *, decode: bool = True) -> Redis:
    """A client for ``settings.redis_dsn``. ``decode=False`` for code that moves raw bytes."""
    pool = BlockingConnectionPool.from_url(
        settings.redis_dsn,
        max_connections=MAX_CONNECTIONS,
        timeout=POOL_WAIT_S,
        decode_responses=decode,
        socket_connect_timeout=CONNECT_TIMEOUT_S,
        health_check_interval=HEALTH_CHECK_INTERVAL_S,
        retry=Retry(ExponentialWithJitterBackoff(base=0.1, cap=2.0), retries=3),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
    )
    return Redis.from_pool(pool)
