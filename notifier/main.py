"""``darkroom notifier``: deliver the job events webhooks asked for until told to stop."""

from __future__ import annotations

from common.health import health_server, redis_writable
from common.keys import Keys
from common.lifecycle import stop_event_on_signals
from common.redis import connect
from common.tenants import LOCAL_TENANT, TenantStore
from common.webhook_targets import Guard, parse_nets
from notifier.notifier import Notifier
from notifier.sender import Sender
from notifier.settings import NotifierSettings


async def run(settings: NotifierSettings) -> None:
    stop = stop_event_on_signals()
    keys = Keys(settings.key_prefix)
    redis = connect(settings)
    tenants = TenantStore(redis, keys)
    local_secret = settings.webhook_secret

    async def secrets_for(tenant: str) -> list[str]:
        if tenant == LOCAL_TENANT and local_secret is not None:
            return [local_secret.get_secret_value()]
        return await tenants.webhook_secrets(tenant)

    sender = Sender(
        Guard(parse_nets(settings.webhook_allow_nets)),
        timeout_s=settings.webhook_timeout_s,
        max_response_bytes=settings.webhook_max_response_bytes,
        max_per_host=settings.webhook_max_per_host,
    )
    notifier = Notifier(
        redis=redis, keys=keys, sender=sender, secrets_for=secrets_for, settings=settings
    )

    async def readiness() -> tuple[bool, str]:
        return await redis_writable(redis, keys.probe(settings.consumer_name))

    try:
        async with health_server(settings.health_port, readiness):
            await notifier.run(stop)
    finally:
        await sender.aclose()
        await redis.aclose()
