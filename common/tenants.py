"""API keys and the tenants they name: create, verify, list, revoke; each key's limits and its
webhook signing secrets. Shared by the ``darkroom keys`` command and the services, so both read and
write the same records.

A key is ``dk_`` + 32 random bytes (URL-safe base64), shown once when created. Redis keeps only
its SHA-256: with 256 random bits there is nothing to guess, so a slow or salted hash would buy
nothing, and a plain digest lets a request find its key in one lookup with no server-side secret
to hand to every replica and the CLI. A tenant is the key's name; one key per name.

A process keeps what a key verified to for ``VERIFY_CACHE_S`` (one Redis lookup per key per
second, not one per request): a revocation made through this process holds at once, one made
elsewhere as soon as its message on the revocations channel arrives (``forget``, which the
gateway's pub/sub connection calls), and within ``VERIFY_CACHE_S`` however it was made, the
channel down or not. A key's limits are read in the same lookup, so they hold within that bound
too. An unknown key is never remembered: a key created a moment ago verifies at once.

A tenant's webhook secret (``whsec_`` + base64 of 24 random bytes, the Standard Webhooks form) is
stored as it is, in the tenant's record: the services must sign with it. After a rotation the
previous one stays valid for a grace period, so receivers can switch without losing a delivery.
"""

from __future__ import annotations

import base64
import builtins
import hashlib
import secrets
import time
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
# The longest a process goes on accepting a key revoked by another process (or replica) that
# never told it; see the module docstring.
VERIFY_CACHE_S = 1.0
# Keys remembered at once; past it the remembered ones are dropped (each then costs one lookup).
VERIFY_CACHE_MAX = 10_000
# No ':' (the name is part of Redis key names), nothing a shell or a URL needs to quote.
NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,62}$"

# Priority classes, highest first. A key's ``max_priority`` is the highest class it may ask for.
Priority = Literal["high", "normal", "low"]
PRIORITIES: tuple[Priority, ...] = ("high", "normal", "low")
WEBHOOK_SECRET_PREFIX = "whsec_"
WEBHOOK_SECRET_RANDOM_BYTES = 24

TenantName = Annotated[
    str,
    Field(
        pattern=NAME_PATTERN,
        description="Lower-case letters, digits, '.', '_' and '-'; 1 to 63 characters, "
        "starting with a letter or digit.",
    ),
]

# The limit fields of a tenant record, in this order in scripts; '' (or absent, in a record made
# before limits existed) means no limit.
_LIMIT_FIELDS = ("rate_per_min", "max_queued", "max_priority", "max_cost")

# KEYS: tenant record, api_keys. ARGV: name, digest, admin, created_at, then the limit fields.
_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'name', ARGV[1], 'key_sha256', ARGV[2], 'admin', ARGV[3],
  'created_at', ARGV[4], 'rate_per_min', ARGV[5], 'max_queued', ARGV[6],
  'max_priority', ARGV[7], 'max_cost', ARGV[8])
redis.call('HSET', KEYS[2], ARGV[2], ARGV[1])
return 1
"""

# KEYS: api_keys. ARGV: digest, tenant key prefix. Returns {name, admin, last_used_at, then the
# limit fields} or nil. Reads only: a Redis out of memory (or a read-only replica) still
# authenticates requests.
_VERIFY = """
local name = redis.call('HGET', KEYS[1], ARGV[1])
if not name then return false end
local fields = redis.call('HMGET', ARGV[2] .. name, 'admin', 'last_used_at',
  'rate_per_min', 'max_queued', 'max_priority', 'max_cost')
if not fields[1] then return false end
return {name, fields[1], fields[2] or '', fields[3] or '', fields[4] or '', fields[5] or '',
  fields[6] or ''}
"""

# KEYS: tenant record. ARGV: a new secret, now, grace seconds, rotate ('1' or '0'). The current
# secret (made now if there is none, or rotated in); nil for no such tenant. A rotation keeps the
# replaced secret as the previous one until now + grace; an older previous one is dropped.
_WEBHOOK_SECRET = """
if redis.call('HEXISTS', KEYS[1], 'admin') == 0 then return false end
local current = redis.call('HGET', KEYS[1], 'webhook_secret')
if current and ARGV[4] ~= '1' then return current end
if current then
  redis.call('HSET', KEYS[1], 'webhook_secret_previous', current,
    'webhook_secret_previous_expires_at', tonumber(ARGV[2]) + tonumber(ARGV[3]))
end
redis.call('HSET', KEYS[1], 'webhook_secret', ARGV[1], 'webhook_secret_created_at', ARGV[2])
return ARGV[1]
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


class KeyLimits(BaseModel):
    """What one key may do. ``null`` (``None``) is no limit."""

    model_config = ConfigDict(extra="forbid")

    rate_per_min: int | None = Field(
        default=None, ge=1, description="Submit requests in any 60 seconds; past it, 429."
    )
    max_queued: int | None = Field(
        default=None, ge=1, description="Jobs queued or running at once; past it, 429."
    )
    max_priority: Priority = Field(
        default="high", description="The highest priority class the key's jobs may ask for."
    )
    max_cost: float | None = Field(
        default=None,
        gt=0,
        allow_inf_nan=False,
        description="The largest job, in megapixel-steps (width × height / 10⁶ × steps × frames "
        "× renders); a larger one is refused with 422.",
    )


NO_LIMITS = KeyLimits()


def priority_allowed(limits: KeyLimits, priority: Priority) -> bool:
    """Whether a key with these limits may submit a job of this priority class."""
    return PRIORITIES.index(priority) >= PRIORITIES.index(limits.max_priority)


class Tenant(BaseModel):
    """Who a request acts for, and its key's limits."""

    name: str
    admin: bool = False
    # A job token's holder (``gateway.job_tokens``): may read this one job and nothing else.
    job_id: str | None = None
    limits: KeyLimits = NO_LIMITS


LOCAL = Tenant(name=LOCAL_TENANT)

_LIMITS_DOC = " Omitted: the server's default for new keys; null: no limit."


class CreateKeyRequest(BaseModel):
    """``POST /v1/keys`` and ``darkroom keys create``. A limit left out takes the server's
    default for new keys (``DARKROOM_KEY_DEFAULT_*``); ``null`` means no limit."""

    model_config = ConfigDict(extra="forbid")

    name: TenantName
    admin: bool = Field(default=False, description="Admin keys manage keys and see every job.")
    rate_per_min: int | None = Field(
        default=None, ge=1, description="Submit requests in any 60 seconds." + _LIMITS_DOC
    )
    max_queued: int | None = Field(
        default=None, ge=1, description="Jobs queued or running at once." + _LIMITS_DOC
    )
    max_priority: Priority | None = Field(
        default=None,
        description="The highest priority class the key's jobs may ask for. Omitted: the "
        "server's default; null: any.",
    )
    max_cost: float | None = Field(
        default=None,
        gt=0,
        allow_inf_nan=False,
        description="The largest job, in megapixel-steps." + _LIMITS_DOC,
    )

    def limits(self, defaults: KeyLimits) -> KeyLimits:
        """The new key's limits: what the request names, the defaults for the rest."""
        given = {
            name: getattr(self, name)
            for name in KeyLimits.model_fields
            if name in self.model_fields_set
        }
        if "max_priority" in given and given["max_priority"] is None:
            given["max_priority"] = PRIORITIES[0]
        return KeyLimits.model_validate(defaults.model_dump() | given)


class KeyInfo(KeyLimits):
    """An API key as listed, with its limits: never the key itself."""

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


class WebhookSecret(BaseModel):
    """A tenant's webhook signing secret (Standard Webhooks: ``whsec_`` + base64). After a
    rotation the previous one still verifies until ``previous_valid_until``."""

    name: str
    secret: str
    previous_valid_until: datetime | None = None


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


def _stored_limits(limits: KeyLimits) -> list[str]:
    """The limit fields as the record holds them, in ``_LIMIT_FIELDS`` order."""
    values = [limits.rate_per_min, limits.max_queued, limits.max_priority, limits.max_cost]
    return ["" if value is None else str(value) for value in values]


def _parse_limits(values: list[str | None]) -> KeyLimits:
    rate, queued, priority, cost = (value or None for value in values)
    return KeyLimits(
        rate_per_min=None if rate is None else int(rate),
        max_queued=None if queued is None else int(queued),
        max_priority=next((p for p in PRIORITIES if p == priority), PRIORITIES[0]),
        max_cost=None if cost is None else float(cost),
    )


def _info(raw: dict[Any, Any]) -> KeyInfo:
    created = _time(raw["created_at"])
    assert created is not None
    limits = _parse_limits([raw.get(name) for name in _LIMIT_FIELDS])
    return KeyInfo(
        name=raw["name"],
        admin=raw["admin"] == "1",
        created_at=created,
        last_used_at=_time(raw.get("last_used_at")),
        **limits.model_dump(),
    )


def new_webhook_secret() -> str:
    return WEBHOOK_SECRET_PREFIX + base64.b64encode(
        secrets.token_bytes(WEBHOOK_SECRET_RANDOM_BYTES)
    ).decode("ascii")


class TenantStore:
    """Key records in Redis. ``redis`` must decode responses (``common.redis.connect``).
    ``defaults``: the limits of a new key where its request names none; ``webhook_grace_s``: how
    long a rotated-out webhook secret stays valid."""

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        *,
        defaults: KeyLimits = NO_LIMITS,
        webhook_grace_s: float = 24 * 3600,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._defaults = defaults
        self._webhook_grace_s = webhook_grace_s
        self._webhook_secret = redis.register_script(_WEBHOOK_SECRET)
        self._create = redis.register_script(_CREATE)
        self._verify = redis.register_script(_VERIFY)
        self._touch = redis.register_script(_TOUCH)
        self._revoke = redis.register_script(_REVOKE)
        # Key digest -> (its tenant, when to look it up again: time.monotonic()).
        self._verified: dict[str, tuple[Tenant, float]] = {}
        # Bumped by every ``forget``: a lookup that was in flight across one is not remembered.
        self._forgets = 0

    async def create(self, request: CreateKeyRequest) -> CreatedKey:
        """A new key for a new name; ``NameTaken`` when the name has a key already."""
        if request.name == LOCAL_TENANT:
            raise ReservedName(request.name)
        key = KEY_PREFIX + secrets.token_urlsafe(KEY_RANDOM_BYTES)
        now = datetime.now(UTC)
        limits = request.limits(self._defaults)
        created = await self._create(
            keys=[self._keys.tenant(request.name), self._keys.api_keys],
            args=[
                request.name,
                digest(key),
                int(request.admin),
                repr(now.timestamp()),
                *_stored_limits(limits),
            ],
        )
        if not created:
            raise NameTaken(request.name)
        return CreatedKey(
            name=request.name, admin=request.admin, created_at=now, key=key, **limits.model_dump()
        )

    async def verify(self, key: str) -> Tenant | None:
        """The tenant a key names; ``None`` for an unknown or revoked key. Notes the key's use
        (at most once a ``LAST_USED_RESOLUTION_S``), best effort: a failed note is no failure.
        A known key is looked up again after ``VERIFY_CACHE_S`` at most."""
        key_digest = digest(key)
        now_s = time.monotonic()
        remembered = self._verified.get(key_digest)
        if remembered is not None and now_s < remembered[1]:
            return remembered[0]
        forgets = self._forgets
        tenant, noted = await self._lookup(key_digest)
        if tenant is None:
            self._verified.pop(key_digest, None)
            return None
        if forgets != self._forgets or not noted:
            return tenant  # the next request looks again (and notes the use then)
        if len(self._verified) >= VERIFY_CACHE_MAX:
            self._verified.clear()
        self._verified[key_digest] = (tenant, now_s + VERIFY_CACHE_S)
        return tenant

    def forget(self, name: str) -> None:
        """Drop what this process remembers of ``name``'s key: it was revoked."""
        self._forgets += 1
        for key_digest, (tenant, _) in list(self._verified.items()):
            if tenant.name == name:
                del self._verified[key_digest]

    async def _lookup(self, key_digest: str) -> tuple[Tenant | None, bool]:
        """The key's tenant, and whether its use is noted (false when the note failed)."""
        found = await self._verify(
            keys=[self._keys.api_keys], args=[key_digest, self._keys.tenant("")]
        )
        if not found:
            return None, False
        name, admin, last_used, *limits = found
        tenant = Tenant(name=name, admin=admin == "1", limits=_parse_limits(limits))
        now = datetime.now(UTC).timestamp()
        if not last_used or now - float(last_used) >= LAST_USED_RESOLUTION_S:
            try:
                await self._touch(keys=[self._keys.tenant(name)], args=[repr(now)])
            except RedisError as exc:
                log.warning("key.touch_failed", tenant=name, error=describe(exc))
                return tenant, False
        return tenant, True

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
        self.forget(name)
        return bool(revoked)

    async def webhook_secret(self, name: str, *, rotate: bool = False) -> WebhookSecret | None:
        """The tenant's webhook signing secret, made on first ask; with ``rotate`` a new one,
        the old one still valid for the grace period. ``None`` for no such tenant. The caller
        shows it to whoever asked and must never log it."""
        now = time.time()
        current = await self._webhook_secret(
            keys=[self._keys.tenant(name)],
            args=[new_webhook_secret(), repr(now), repr(self._webhook_grace_s), int(rotate)],
        )
        if current is None:
            return None
        previous = await self._previous_webhook_secret(name, now)
        return WebhookSecret(
            name=name,
            secret=current,
            previous_valid_until=None if previous is None else _time(previous[1]),
        )

    async def webhook_secrets(self, name: str) -> builtins.list[str]:
        """The tenant's valid webhook secrets, newest first: sign with the first; a receiver
        mid-rotation may still hold the second. Empty when the tenant has none."""
        current = await self._redis.hget(self._keys.tenant(name), "webhook_secret")
        if current is None:
            return []
        previous = await self._previous_webhook_secret(name, time.time())
        return [str(current)] if previous is None else [str(current), previous[0]]

    async def _previous_webhook_secret(self, name: str, now: float) -> tuple[str, str] | None:
        """The rotated-out secret and when it stops being valid, while it still is."""
        secret, expires_at = await self._redis.hmget(
            self._keys.tenant(name),
            ["webhook_secret_previous", "webhook_secret_previous_expires_at"],
        )
        if secret is None or expires_at is None or float(expires_at) <= now:
            return None
        return str(secret), str(expires_at)
