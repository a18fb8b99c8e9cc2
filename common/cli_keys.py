"""``darkroom keys create|list|revoke``: API keys in the Redis the services use.

Redis comes from the same settings as the services (``REDIS_URL``, ``REDIS_HOST``…); with none
in the environment, from a ``darkroom up`` running in this directory (``.darkroom/redis.url``),
else from ``.env`` or the services' default. A new key is printed alone on the last line of
stdout, once.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import datetime

from pydantic import ValidationError
from redis.exceptions import RedisError

from common.keys import Keys
from common.local import LocalSettings, redis_configured, running_redis_url
from common.redis import connect
from common.tenants import CreateKeyRequest, NameTaken, ReservedName, TenantStore


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keys = commands.add_parser("keys", help="API keys: create, list, revoke")
    actions = keys.add_subparsers(dest="keys_command", required=True, metavar="COMMAND")
    create = actions.add_parser("create", help="create a key; prints it once, on the last line")
    create.add_argument("--name", required=True, help="the key's name: its tenant")
    create.add_argument("--admin", action="store_true", help="may manage keys and see every job")
    actions.add_parser("list", help="names, admin, created, last used (never the key)")
    revoke = actions.add_parser("revoke", help="revoke a key: requests with it get 401 at once")
    revoke.add_argument("name")


def _redis_settings(settings: LocalSettings) -> LocalSettings:
    # The rule `darkroom up` follows: only Redis variables in the environment stop it from
    # starting its own Redis, so only they win over the one it started.
    if redis_configured():
        return settings
    url = running_redis_url(settings.state_dir)
    return settings if url is None else settings.model_copy(update={"redis_url": url})


def _when(value: datetime | None) -> str:
    return "never" if value is None else value.strftime("%Y-%m-%d %H:%M:%S UTC")


async def _run(args: argparse.Namespace, settings: LocalSettings) -> int:
    redis = connect(settings)
    store = TenantStore(redis, Keys(settings.key_prefix))
    try:
        match args.keys_command:
            case "create":
                try:
                    request = CreateKeyRequest(name=args.name, admin=args.admin)
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
                print(created.key)
            case "list":
                found = await store.list()
                print(f"{'NAME':<24} {'ADMIN':<6} {'CREATED':<24} LAST USED")
                for info in found:
                    admin = "yes" if info.admin else "no"
                    print(
                        f"{info.name:<24} {admin:<6} {_when(info.created_at):<24} "
                        f"{_when(info.last_used_at)}"
                    )
            case "revoke":
                if not await store.revoke(args.name):
                    print(f"darkroom: no key named {args.name!r}", file=sys.stderr)
                    return 1
                print(f"Revoked key {args.name!r}.")
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
