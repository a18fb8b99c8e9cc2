"""Settings shared by every service: Redis, key prefix, job TTLs, storage location, logging.

Each service subclasses ``CommonSettings`` with its own fields and builds it once at start-up.
The seeds' variable names (``REDIS_URL``, ``REDIS_HOST``…, ``TASK_TTL``, ``AWS_*``,
``S3_BUCKET_NAME``) are accepted as written; Darkroom's own settings use the ``DARKROOM_`` prefix.
Sources, strongest first: the environment, ``.env``, then files in the secrets directory (a mounted
Kubernetes Secret), each file named like a variable (``REDIS_PASSWORD``, ``AWS_SECRET_ACCESS_KEY``).
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import quote

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SecretsSettingsSource,
    SettingsConfigDict,
)

from common.tenants import KeyLimits, Priority
from common.usage import USAGE_RETENTION_DAYS

ENV_PREFIX = "DARKROOM_"
# Where the Kubernetes manifests mount the credentials Secret; skipped where it does not exist.
DEFAULT_SECRETS_DIR = Path("/run/secrets/darkroom")


class SettingsError(ValueError):
    """A setting is unknown or invalid; raised at start-up, never later."""


def seed_alias(name: str) -> AliasChoices:
    """Accept the seeds' unprefixed name and the prefixed one."""
    return AliasChoices(name, f"{ENV_PREFIX}{name}")


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        extra="ignore",
        populate_by_name=True,
    )

    # Redis: REDIS_URL wins; otherwise the seed-1 variables build one.
    redis_url: str | None = Field(default=None, validation_alias=seed_alias("REDIS_URL"))
    redis_host: str = Field(default="localhost", validation_alias=seed_alias("REDIS_HOST"))
    redis_port: int = Field(default=6379, validation_alias=seed_alias("REDIS_PORT"))
    redis_db: int = Field(default=0, validation_alias=seed_alias("REDIS_DB"))
    redis_password: str | None = Field(default=None, validation_alias=seed_alias("REDIS_PASSWORD"))
    key_prefix: str = "darkroom:"

    # How long a finished job's record and event log stay readable (seed 1: TASK_TTL).
    task_ttl_s: int = Field(default=3600, ge=1, validation_alias=seed_alias("TASK_TTL"))
    # How long a tenant's daily usage (GET /v1/usage) is kept.
    usage_retention_days: int = Field(default=USAGE_RETENTION_DAYS, ge=1)
    # A job waiting longer than this is served as if one priority class higher (so low never
    # starves); the gateway's submits and the workers' refills must agree (common/scheduler.py).
    priority_aging_s: float = Field(default=300.0, gt=0)
    # How long input and output bytes may wait in Redis for the next stage.
    blob_ttl_s: int = Field(default=6 * 3600, ge=60)

    # Where results go: a local directory (served by the gateway at /output) or S3.
    storage: Literal["local", "s3"] = "local"
    output_dir: Path = Path("output")
    # Base of the URLs handed to clients for local results.
    public_base_url: str = "http://localhost:8000"

    # The model catalogue (TOML) shared by gateway and workers; unset means the production one.
    models_file: Path | None = None

    # Networks (CIDRs, comma-separated) webhooks may reach although private or loopback: the
    # gateway checks literal addresses at submit, the notifier every address it resolves.
    webhook_allow_nets: Annotated[tuple[str, ...], NoDecode] = ()

    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: str = "INFO"

    # Files named like settings, one value each (read before the model is built: see below).
    secrets_dir: Path = DEFAULT_SECRETS_DIR

    @field_validator("webhook_allow_nets", mode="before")
    @classmethod
    def _cidrs(cls, value: object) -> object:
        values = value.split(",") if isinstance(value, str) else value
        if isinstance(values, (list, tuple)):
            nets = tuple(str(v).strip() for v in values if str(v).strip())
            for net in nets:
                ipaddress.ip_network(net, strict=False)  # a ValueError names the bad one
            return nets
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The sources have read the environment and the .env file(s) by now: a typo in either,
        # or in the name of a secret file, stops start-up here, before any value is used.
        env, dotenv = _env_vars(env_settings), _env_vars(dotenv_settings)
        secrets_dir = _secrets_dir(env, dotenv)
        names: dict[str, Iterable[str]] = {"environment": env, ".env": dotenv}
        if secrets_dir:
            names[str(secrets_dir)] = [path.name for path in secrets_dir.iterdir()]
        reject_unknown(names)
        secrets = SecretsSettingsSource(settings_cls, secrets_dir=secrets_dir)
        return init_settings, env_settings, dotenv_settings, secrets

    @property
    def redis_dsn(self) -> str:
        if self.redis_url:
            return self.redis_url
        auth = f":{quote(self.redis_password, safe='')}@" if self.redis_password else ""
        return f"redis://{auth}{self.redis_host}:{self.redis_port}/{self.redis_db}"


class KeySettings(CommonSettings):
    """What whoever creates API keys shares (``darkroom keys`` and the gateway's ``/v1/keys``):
    the limits a new key gets where its request names none, and webhook-secret rotation."""

    # Submit requests per key in any 60 s; empty or 'none': no limit.
    key_default_rate_per_min: int | None = Field(default=60, ge=1)
    # Jobs per key queued or running at once. Keep it well under every route's max_queue.
    key_default_max_queued: int | None = Field(default=20, ge=1)
    key_default_max_priority: Priority = "normal"
    # The largest job per key, in megapixel-steps (common/cost.py); empty or 'none': no limit.
    key_default_max_cost: float | None = Field(default=None, gt=0)
    # After `darkroom keys webhook-secret NAME --rotate`, the old secret still verifies this long.
    webhook_secret_grace_s: int = Field(default=24 * 3600, ge=0)

    @field_validator(
        "key_default_rate_per_min",
        "key_default_max_queued",
        "key_default_max_cost",
        mode="before",
    )
    @classmethod
    def _none_is_no_limit(cls, value: object) -> object:
        # DARKROOM_KEY_DEFAULT_MAX_COST= (or =none): new keys get no such limit.
        return None if isinstance(value, str) and value.strip().lower() in ("", "none") else value

    @property
    def key_defaults(self) -> KeyLimits:
        return KeyLimits(
            rate_per_min=self.key_default_rate_per_min,
            max_queued=self.key_default_max_queued,
            max_priority=self.key_default_max_priority,
            max_cost=self.key_default_max_cost,
        )


class ConsumerSettings(CommonSettings):
    """What the stream-consuming services (worker, uploader) share."""

    consumer_name: str = Field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    block_ms: int = Field(default=2000, ge=1)
    # An entry pending this long on a silent member is taken over by another.
    claim_idle_ms: int = Field(default=60_000, ge=1000)
    # Serve /livez, /readyz and /metrics on this port; unset: no probe server.
    health_port: int | None = Field(default=None, ge=1, le=65535)
    # After SIGTERM, the work in hand gets this long to finish; then it is released to the
    # group for another member, and the process exits.
    drain_grace_s: float = Field(default=60.0, ge=0)


class ClientSettings(CommonSettings):
    """What ``darkroom generate`` and ``darkroom jobs`` read: the gateway and the key to use.
    Declared here, where every service loads it, so ``DARKROOM_URL`` and ``DARKROOM_API_KEY`` in a
    shared environment are known names, not typos."""

    url: str = "http://localhost:8000"
    api_key: str | None = None


def _subclasses(cls: type[Any]) -> list[type[Any]]:
    found = [cls]
    for sub in cls.__subclasses__():
        found.extend(_subclasses(sub))
    return found


def known_prefixed_names() -> set[str]:
    """Every ``DARKROOM_*`` variable some loaded settings class understands."""
    names: set[str] = set()
    for cls in _subclasses(CommonSettings):
        for field_name, field in cls.model_fields.items():
            names.add(f"{ENV_PREFIX}{field_name}".upper())
            alias = field.validation_alias
            if isinstance(alias, AliasChoices):
                names.update(str(choice).upper() for choice in alias.choices)
    return {name for name in names if name.startswith(ENV_PREFIX)}


def unknown_prefixed(names: Iterable[str]) -> set[str]:
    """``DARKROOM_*`` names that no settings class reads: almost always a typo."""
    prefixed = {name.upper() for name in names if name.upper().startswith(ENV_PREFIX)}
    return prefixed - known_prefixed_names()


def reject_unknown(names_by_origin: dict[str, Iterable[str]]) -> None:
    """Raise :class:`SettingsError` naming every unknown ``DARKROOM_*`` name and where it is."""
    found = [
        f"{name} (in {origin})"
        for origin, names in names_by_origin.items()
        for name in sorted(unknown_prefixed(names))
    ]
    if found:
        raise SettingsError(
            f"unknown setting(s): {', '.join(found)}; "
            f"known {ENV_PREFIX}* settings: {', '.join(sorted(known_prefixed_names()))}"
        )


def _env_vars(source: PydanticBaseSettingsSource) -> Mapping[str, str | None]:
    # The env source holds os.environ, the dotenv source (a subclass) what its files define;
    # both with lower-cased names (the settings are case-insensitive).
    return source.env_vars if isinstance(source, EnvSettingsSource) else {}


def _secrets_dir(*sources: Mapping[str, str | None]) -> Path | None:
    """DARKROOM_SECRETS_DIR from the first source that sets it, else the default if it exists."""
    for env_vars in sources:
        value = env_vars.get(f"{ENV_PREFIX}secrets_dir".lower())
        if value:
            if not Path(value).is_dir():
                raise SettingsError(f"{ENV_PREFIX}SECRETS_DIR={value} is not a directory")
            return Path(value)
    return DEFAULT_SECRETS_DIR if DEFAULT_SECRETS_DIR.is_dir() else None
