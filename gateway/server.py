"""``darkroom gateway`` and ``darkroom status``: the HTTP app under uvicorn."""

from __future__ import annotations

import uvicorn

from gateway.app import Role, create_app
from gateway.auth import warn_if_open
from gateway.settings import GatewaySettings

# Longer than an SSE heartbeat, so open feeds get their terminal events before shutdown.
GRACEFUL_SHUTDOWN_S = 20


def serve(settings: GatewaySettings, role: Role) -> None:
    warn_if_open(settings)
    uvicorn.run(
        create_app(settings, role=role),
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=settings.access_log,
        proxy_headers=True,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
    )
