"""Probes and metrics for the consumer services (worker, uploader), which serve no HTTP API.

``GET /livez`` answers while the event loop runs and the service's liveness check, if any,
passes (a worker whose render thread is stuck is not live); ``GET /readyz`` answers 200 only
while the service's readiness check passes (Redis reachable, models warm…), 503 otherwise, and
says what the service serves; ``GET /metrics`` is Prometheus text. Kubernetes points its probes
here (``DARKROOM_HEALTH_PORT``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping

import prometheus_client
import uvicorn
from redis.asyncio import Redis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

from common.redis_errors import REDIS_TRANSIENT, describe

# (ready, reason when not)
ReadinessCheck = Callable[[], Awaitable[tuple[bool, str]]]
# (live, reason when not); awaits nothing, so a blocked event loop fails it by not answering.
LivenessCheck = Callable[[], tuple[bool, str]]
# What the service serves, added to the /readyz body.
ProbeDetails = Callable[[], Mapping[str, object]]
# How long a readiness probe's key lives: longer than any probe period.
PROBE_TTL_MS = 60_000


async def redis_writable(redis: Redis, key: str) -> tuple[bool, str]:
    """Ready only while Redis takes this service's writes: a ping passes while a full (OOM) or
    demoted (READONLY) server refuses every change, so the probe writes a small key."""
    try:
        await redis.set(key, "1", px=PROBE_TTL_MS)
    except REDIS_TRANSIENT as exc:
        return False, f"redis refuses writes: {describe(exc)}"
    return True, ""


def health_app(
    ready: ReadinessCheck, live: LivenessCheck | None = None, details: ProbeDetails | None = None
) -> Starlette:
    async def livez(request: Request) -> JSONResponse:
        ok, reason = live() if live is not None else (True, "")
        body = {"status": "ok"} if ok else {"status": "not live", "reason": reason}
        return JSONResponse(body, status_code=200 if ok else 503)

    async def readyz(request: Request) -> JSONResponse:
        ok, reason = await ready()
        body: dict[str, object] = (
            {"status": "ready"} if ok else {"status": "not ready", "reason": reason}
        )
        body.update(details() if details is not None else {})
        return JSONResponse(body, status_code=200 if ok else 503)

    return Starlette(
        routes=[Route("/livez", livez), Route("/readyz", readyz), Route("/metrics", metrics)]
    )


async def metrics(request: Request) -> Response:
    """Prometheus text of this process's registry."""
    return Response(
        prometheus_client.generate_latest(), media_type=prometheus_client.CONTENT_TYPE_LATEST
    )


class _EmbeddedServer(uvicorn.Server):
    """uvicorn inside a service that owns its signals: SIGTERM means drain, not stop probing."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.asynccontextmanager
async def health_server(
    port: int | None,
    ready: ReadinessCheck,
    live: LivenessCheck | None = None,
    details: ProbeDetails | None = None,
) -> AsyncIterator[None]:
    """Serve the probes on ``port`` (all interfaces) while the block runs; ``None``: no server."""
    if port is None:
        yield
        return
    async with embedded_server(health_app(ready, live, details), "0.0.0.0", port):
        yield


@contextlib.asynccontextmanager
async def embedded_server(app: ASGIApp, host: str, port: int) -> AsyncIterator[None]:
    """Serve ``app`` on ``host:port`` beside the process's own work while the block runs (the
    probes, or a service's metrics port apart from its public one)."""
    config = uvicorn.Config(app, host=host, port=port, log_config=None, access_log=False)
    server = _EmbeddedServer(config)
    task = asyncio.create_task(server.serve(), name=f"embedded-server-{port}")
    try:
        yield
    finally:
        server.should_exit = True
        await task
