"""``darkroom keys create|list|revoke|webhook-secret``: API keys, their limits and their tenants'
webhook secrets, in the Redis the services use.

Redis comes from the same settings as the services (``REDIS_URL``, ``REDIS_HOST``…); with none
in the environment, from a ``darkroom up`` running in this directory (``.darkroom/redis.url``),
else from ``.env`` or the services' default. A new key is printed alone on the last line of
stdout, once; so is a webhook secret. A limit left out takes the default for new keys
(``DARKROOM_KEY_DEFAULT_*``); ``none`` means no limit.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable
from datetime import datetime

from pydantic import ValidationError
from redis.exceptions import RedisError

from common.keys import Keys
from common.local import LocalSettings, redis_configured, running_redis_url
from common.redis import connect
from common.tenants import (
    PRIORITIES,
    CreateKeyRequest,
    KeyInfo,
    NameTaken,
    ReservedName,
    TenantStore,
)

NO_LIMIT = "none"


def _limit(kind: type[int] | type[float]) -> Callable[[str], int | float | None]:
    """An argparse type: a positive number, or ``none`` for no limit."""

    def parse(text: str) -> int | float | None:
        if text.strip().lower() == NO_LIMIT:
            return None
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: give a number or {NO_LIMIT!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text!r}: give a number above 0 or {NO_LIMIT!r}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its errors
    return parse


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keys = commands.add_parser("keys", help="API keys: create, list, revoke, webhook secrets")
    actions = keys.add_subparsers(dest="keys_command", required=True, metavar="COMMAND")
    create = actions.add_parser("create", help="create a key; prints it once, on the last line")
    create.add_argument("--name", required=True, help="the key's name: its tenant")
    create.add_argument("--admin", action="store_true", help="may manage keys and see every job")
    # Not given: the option stays off the request, so the server's default applies.
    create.add_argument(
        "--rate-per-min",
        type=_limit(int),
        default=argparse.SUPPRESS,
        help="submit requests in any 60 s (or 'none')",
    )
    create.add_argument(
        "--max-queued",
        type=_limit(int),
        default=argparse.SUPPRESS,
        help="jobs queued or running at once (or 'none')",
    )
    create.add_argument(
        "--max-priority",
        choices=PRIORITIES,
        default=argparse.SUPPRESS,
        help="the highest priority class its jobs may ask for",
    )
    create.add_argument(
        "--max-cost",
        type=_limit(float),
        default=argparse.SUPPRESS,
        help="the largest job, in megapixel-steps (or 'none')",
    )
    actions.add_parser("list", help="names, admin, limits, created, last used (never the key)")
    revoke = actions.add_parser(
        "revoke", help="revoke a key: requests with it get 401 (on every gateway within 1 s)"
    )
    revoke.add_argument("name")
    secret = actions.add_parser(
        "webhook-secret",
        help="print the tenant's webhook signing secret (made on first ask) on the last line",
    )
    secret.add_argument("name")
    secret.add_argument(
        "--rotate",
        action="store_true",
        help="make a new one; the old one stays valid for DARKROOM_WEBHOOK_SECRET_GRACE_S",
    )


def _redis_settings(settings: LocalSettings) -> LocalSettings:
    # The rule `darkroom up` follows: only Redis variables in the environment stop it from
    # starting its own Redis, so only they win over the one it started.
    if redis_configured():
        return settings
    url = running_redis_url(settings.state_dir)
    return settings if url is None else settings.model_copy(update={"redis_url": url})


def _when(value: datetime | None) -> str:
    return "never" if value is None else value.strftime("%Y-%m-%d %H:%M:%S UTC")


def _shown(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def _row(info: KeyInfo) -> str:
    admin = "yes" if info.admin else "no"
    return (
        f"{info.name:<24} {admin:<6} {_shown(info.rate_per_min):<9} {_shown(info.max_queued):<7} "
        f"{info.max_priority:<9} {_shown(info.max_cost):<9} {_when(info.created_at):<24} "
        f"{_when(info.last_used_at)}"
    )


LIST_HEADER = (
    f"{'NAME':<24} {'ADMIN':<6} {'RATE/MIN':<9} {'QUEUED':<7} {'PRIORITY':<9} {'MAX COST':<9} "
    f"{'CREATED':<24} LAST USED"
)


async def _run(args: argparse.Namespace, settings: LocalSettings) -> int:
    redis = connect(settings)
    store = TenantStore(
        redis,
        Keys(settings.key_prefix),
        defaults=settings.key_defaults,
        webhook_grace_s=settings.webhook_secret_grace_s,
    )
    try:
        match args.keys_command:
            case "create":
                limits = {
                    name: getattr(args, name)
                    for name in ("rate_per_min", "max_queued", "max_priority", "max_cost")
                    if hasattr(args, name)
                }
                try:
                    request = CreateKeyRequest(name=args.name, admin=args.admin, **limits)
                    created = await store.create(request)
                except ValidationError:
                    print(
                        f"darkroom: invalid key name {args.name!r}: use lower-case letters, "
                        "digits, '.', '_' and '-' (1 to 63, starting with a letter or digit)",
                        file=sys.stderr,
                    )
                    return 2
                except (NameTaken, ReservedName) as exc:
                    print(f"darkroom: {exc}", file=sys.stderr)
                    return 1
                kind = "admin key" if created.admin else "key"
                print(f"Created {kind} {created.name!r}. Store it now: it is not shown again.")
                print(LIST_HEADER)
                print(_row(created))
                print(created.key)
            case "list":
                found = await store.list()
                print(LIST_HEADER)
                for info in found:
                    print(_row(info))
            case "revoke":
                if not await store.revoke(args.name):
                    print(f"darkroom: no key named {args.name!r}", file=sys.stderr)
                    return 1
                print(f"Revoked key {args.name!r}.")
            case "webhook-secret":
                secret = await store.webhook_secret(args.name, rotate=args.rotate)
                if secret is None:
                    print(f"darkroom: no key named {args.name!r}", file=sys.stderr)
                    return 1
                if secret.previous_valid_until is not None:
                    print(
                        "The previous secret stays valid until "
                        f"{_when(secret.previous_valid_until)}."
                    )
                print(f"Webhook signing secret of {args.name!r} (keep it secret):")
                print(secret.secret)
        return 0
    except RedisError as exc:
        print(
            f"darkroom: cannot use Redis at {settings.redis_dsn}: {exc}. Set REDIS_URL, or run "
            "this where 'darkroom up' is running.",
            file=sys.stderr,
        )
        return 1
    finally:
        await redis.aclose()


def run(args: argparse.Namespace, settings: LocalSettings) -> int:
    return asyncio.run(_run(args, _redis_settings(settings)))
