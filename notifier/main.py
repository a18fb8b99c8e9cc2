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
    tenants = TenantStore(redis, keys)  # it only reads secrets, or makes a first one
    local_secret = settings.webhook_secret

    async def secrets_for(tenant: str) -> list[str]:
        """The tenant's signing secrets, newest first; a tenant that never asked for one gets
        one now (``darkroom keys webhook-secret NAME`` shows it). Jobs made with auth off are
        signed with ``DARKROOM_WEBHOOK_SECRET``."""
        if tenant == LOCAL_TENANT:
            return [] if local_secret is None else [local_secret.get_secret_value()]
        found = await tenants.webhook_secrets(tenant)
        if not found and (made := await tenants.webhook_secret(tenant)) is not None:
            found = [made.secret]
        return found

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
