"""API keys and the tenants they name: create, verify, list, revoke. Shared by the ``darkroom keys``
command and the services, so both read and write the same records.

A key is ``dk_`` + 32 random bytes (URL-safe base64), shown once when created. Redis keeps only
its SHA-256: with 256 random bits there is nothing to guess, so a slow or salted hash would buy
nothing, and a plain digest lets a request find its key in one lookup with no server-side secret
to hand to every replica and the CLI. A tenant is the key's name; one key per name.

Nothing is cached in a process: every request looks its key up in Redis, so a revocation holds on
every replica at once.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from redis.asyncio import Redis
from redis.exceptions import RedisError

from common.keys import Keys
from common.logging import get_logger
from common.redis_errors import describe

log = get_logger(__name__)

# DARKROOM_AUTH: "keys" (each request names its tenant by its key) or "off" (one tenant, local).
AuthMode = Literal["keys", "off"]
# With auth off every job belongs to this tenant; no key may take the name.
LOCAL_TENANT = "local"
KEY_PREFIX = "dk_"
KEY_RANDOM_BYTES = 32
# "Last used" is this precise: one write per key per minute at most, not one per request.
LAST_USED_RESOLUTION_S = 60.0
# No ':' (the name is part of Redis key names), nothing a shell or a URL needs to quote.
NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,62}$"

TenantName = Annotated[
    str,
    Field(
        pattern=NAME_PATTERN,
        description="Lower-case letters, digits, '.', '_' and '-'; 1 to 63 characters, "
        "starting with a letter or digit.",
    ),
]

# KEYS: tenant record, api_keys. ARGV: name, digest, admin, created_at.
_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'name', ARGV[1], 'key_sha256', ARGV[2], 'admin', ARGV[3],
  'created_at', ARGV[4])
redis.call('HSET', KEYS[2], ARGV[2], ARGV[1])
return 1
"""

# KEYS: api_keys. ARGV: digest, tenant key prefix. Returns {name, admin, last_used_at} or nil.
# Reads only: a Redis out of memory (or a read-only replica) still authenticates requests.
_VERIFY = """
local name = redis.call('HGET', KEYS[1], ARGV[1])
if not name then return false end
local fields = redis.call('HMGET', ARGV[2] .. name, 'admin', 'last_used_at')
if not fields[1] then return false end
return {name, fields[1], fields[2] or ''}
"""

# KEYS: tenant record. ARGV: now. Only on a live record: a touch racing a revoke must not leave
# a stray record behind (it would keep the name taken).
_TOUCH = """
if redis.call('HEXISTS', KEYS[1], 'admin') == 0 then return 0 end
return redis.call('HSET', KEYS[1], 'last_used_at', ARGV[1])
"""

# KEYS: tenant record, api_keys. ARGV: name, revocations channel.
_REVOKE = """
local digest = redis.call('HGET', KEYS[1], 'key_sha256')
if not digest then return 0 end
redis.call('HDEL', KEYS[2], digest)
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', ARGV[2], ARGV[1])
return 1
"""


class Tenant(BaseModel):
    """Who a request acts for."""

    name: str
    admin: bool = False
    # A job token's holder (``gateway.job_tokens``): may read this one job and nothing else.
    job_id: str | None = None


LOCAL = Tenant(name=LOCAL_TENANT)


class CreateKeyRequest(BaseModel):
    """``POST /v1/keys`` and ``darkroom keys create``."""

    model_config = ConfigDict(extra="forbid")

    name: TenantName
    admin: bool = Field(default=False, description="Admin keys manage keys and see every job.")


class KeyInfo(BaseModel):
    """An API key as listed: never the key itself."""

    name: str
    admin: bool
    created_at: datetime
    last_used_at: datetime | None = None


class CreatedKey(KeyInfo):
    """A new key. ``key`` is shown this once: Redis keeps only its SHA-256."""

    key: str


class RevokedKey(BaseModel):
    """The key is gone: requests with it get 401 from now on."""

    name: str
    revoked: bool = True


class NameTaken(Exception):
    def __init__(self, name: str) -> None:
        super().__init__(f"a key named {name!r} already exists; revoke it first or pick another")
        self.name = name


class ReservedName(ValueError):
    def __init__(self, name: str) -> None:
        super().__init__(f"{name!r} is the tenant of auth-off mode; pick another name")


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _time(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(float(value), UTC)


def _info(raw: dict[Any, Any]) -> KeyInfo:
    created = _time(raw["created_at"])
    assert created is not None
    return KeyInfo(
        name=raw["name"],
        admin=raw["admin"] == "1",
        created_at=created,
        last_used_at=_time(raw.get("last_used_at")),
    )


class TenantStore:
    """Key records in Redis. ``redis`` must decode responses (``common.redis.connect``)."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self._redis = redis
        self._keys = keys
        self._create = redis.register_script(_CREATE)
        self._verify = redis.register_script(_VERIFY)
        self._touch = redis.register_script(_TOUCH)
        self._revoke = redis.register_script(_REVOKE)

    async def create(self, request: CreateKeyRequest) -> CreatedKey:
        """A new key for a new name; ``NameTaken`` when the name has a key already."""
        if request.name == LOCAL_TENANT:
            raise ReservedName(request.name)
        key = KEY_PREFIX + secrets.token_urlsafe(KEY_RANDOM_BYTES)
        now = datetime.now(UTC)
        created = await self._create(
            keys=[self._keys.tenant(request.name), self._keys.api_keys],
            args=[request.name, digest(key), int(request.admin), repr(now.timestamp())],
        )
        if not created:
            raise NameTaken(request.name)
        return CreatedKey(name=request.name, admin=request.admin, created_at=now, key=key)

    async def verify(self, key: str) -> Tenant | None:
        """The tenant a key names; ``None`` for an unknown or revoked key. Notes the key's use
        (at most once a ``LAST_USED_RESOLUTION_S``), best effort: a failed note is no failure."""
        found = await self._verify(
            keys=[self._keys.api_keys], args=[digest(key), self._keys.tenant("")]
        )
        if not found:
            return None
        name, admin, last_used = found
        now = datetime.now(UTC).timestamp()
        if not last_used or now - float(last_used) >= LAST_USED_RESOLUTION_S:
            try:
                await self._touch(keys=[self._keys.tenant(name)], args=[repr(now)])
            except RedisError as exc:
                log.warning("key.touch_failed", tenant=name, error=describe(exc))
        return Tenant(name=name, admin=admin == "1")

    async def list(self) -> list[KeyInfo]:
        found = await self._redis.hvals(self._keys.api_keys)
        names = sorted({n if isinstance(n, str) else n.decode() for n in found})
        async with self._redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hgetall(self._keys.tenant(name))
            records: list[dict[str, str]] = await pipe.execute()
        # A key revoked between the two reads has no record left: skip it.
        return [_info(raw) for raw in records if raw]

    async def revoke(self, name: str) -> bool:
        """``False`` when no key has that name. Open SSE feeds made with the key close too
        (``gateway.fanout``)."""
        revoked = await self._revoke(
            keys=[self._keys.tenant(name), self._keys.api_keys],
            args=[name, self._keys.revocations],
        )
        return bool(revoked)
