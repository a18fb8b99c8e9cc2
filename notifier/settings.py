"""Notifier settings: the retry schedule, the limits of each attempt, the signing secret."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import NoDecode

from common.settings import ConsumerSettings

# When each attempt is made, in seconds after the one before (the first: at once). Start and
# end events get them all, about a day in total; a progress event gets only the first.
DEFAULT_RETRY_SCHEDULE_S = (0.0, 5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)


class NotifierSettings(ConsumerSettings):
    claim_idle_ms: int = Field(default=30_000, ge=1000)
    # Signs the webhooks of jobs made with auth off (tenant ``local``); a tenant's own secret
    # (``darkroom keys webhook-secret``) signs the rest.
    webhook_secret: SecretStr | None = None
    webhook_retry_schedule_s: Annotated[tuple[float, ...], NoDecode] = Field(
        default=DEFAULT_RETRY_SCHEDULE_S, min_length=1
    )
    # A random share of each delay added or taken away, so retries after an outage spread out.
    webhook_retry_jitter: float = Field(default=0.2, ge=0, lt=1)
    webhook_timeout_s: float = Field(default=10.0, gt=0, le=60)
    webhook_max_response_bytes: int = Field(default=64 * 1024, ge=0)
    # Attempts in flight at once: in all, and to any one receiving host.
    webhook_concurrency: int = Field(default=64, ge=1)
    webhook_max_per_host: int = Field(default=8, ge=1)
    # Kept after the retry schedule ends, for the delivery log and redeliveries.
    webhook_log_keep_s: int = Field(default=24 * 3600, ge=60)

    @field_validator("webhook_retry_schedule_s", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(float(part) for part in value.split(",") if part.strip())
        return value

    @property
    def webhook_retention_s(self) -> int:
        return int(sum(self.webhook_retry_schedule_s) * 1.5) + self.webhook_log_keep_s
