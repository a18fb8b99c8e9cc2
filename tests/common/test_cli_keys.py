"""``darkroom keys create|list|revoke`` as a user runs it: a subprocess against a real Redis,
configured by ``REDIS_URL`` or found through a running ``darkroom up``'s ``.darkroom/redis.url``."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

from redis.asyncio import Redis

from common.keys import Keys
from common.redis_server import RedisServer, free_port
from common.tenants import KeyLimits, TenantStore
from tests.support.stack import REPO_ROOT


def darkroom(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "common.cli", "keys", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


def clean_env(prefix: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DARKROOM_", "REDIS_"))}
    return env | {"DARKROOM_KEY_PREFIX": prefix, "PYTHONPATH": str(REPO_ROOT)} | extra


async def test_create_list_revoke(tmp_path: Path, redis_server: RedisServer, redis: Redis) -> None:
    prefix = f"cli-{uuid.uuid4().hex[:8]}:"
    env = clean_env(prefix, REDIS_URL=redis_server.url)
    store = TenantStore(redis, Keys(prefix))

    created = darkroom(tmp_path, env, "create", "--name", "ci-bot")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip().splitlines()[-1]
    assert key.startswith("dk_") and " " not in key
    admin = darkroom(tmp_path, env, "create", "--name", "ops", "--admin")
    admin_key = admin.stdout.strip().splitlines()[-1]
    # The printed keys are the ones the services accept.
    ci_bot, ops = await store.verify(key), await store.verify(admin_key)
    assert ci_bot is not None and (ci_bot.name, ci_bot.admin) == ("ci-bot", False)
    assert ops is not None and (ops.name, ops.admin) == ("ops", True)

    listed = darkroom(tmp_path, env, "list")
    assert listed.returncode == 0, listed.stderr
    rows = {line.split()[0]: line.split() for line in listed.stdout.splitlines()[1:]}
    assert rows["ci-bot"][1] == "no" and rows["ops"][1] == "yes"
    assert rows["ops"][-1] != "never"  # its verify above was a use
    assert key not in listed.stdout and admin_key not in listed.stdout

    taken = darkroom(tmp_path, env, "create", "--name", "ci-bot")
    assert taken.returncode == 1 and "already exists" in taken.stderr
    bad = darkroom(tmp_path, env, "create", "--name", "Bad Name")
    assert bad.returncode == 2 and "invalid key name" in bad.stderr

    revoked = darkroom(tmp_path, env, "revoke", "ci-bot")
    assert revoked.returncode == 0, revoked.stderr
    assert await store.verify(key) is None
    assert [i.name for i in await store.list()] == ["ops"]
    missing = darkroom(tmp_path, env, "revoke", "ci-bot")
    assert missing.returncode == 1 and "no key named" in missing.stderr


async def test_finds_the_redis_of_a_running_darkroom_up(
    tmp_path: Path, redis_server: RedisServer, redis: Redis
) -> None:
    prefix = f"cli-{uuid.uuid4().hex[:8]}:"
    env = clean_env(prefix)
    # What `darkroom up` leaves while it runs an embedded Redis.
    (tmp_path / ".darkroom").mkdir()
    (tmp_path / ".darkroom" / "redis.url").write_text(redis_server.url + "\n")
    created = darkroom(tmp_path, env, "create", "--name", "laptop")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip().splitlines()[-1]
    assert await TenantStore(redis, Keys(prefix)).verify(key) is not None


def test_no_redis_reachable_is_a_clear_error(tmp_path: Path) -> None:
    env = clean_env("cli:", REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    failed = darkroom(tmp_path, env, "list")
    assert failed.returncode == 1
    assert "cannot use Redis" in failed.stderr and "Traceback" not in failed.stderr


async def test_create_with_limits_lists_them_and_defaults_come_from_settings(
    tmp_path: Path, redis_server: RedisServer, redis: Redis
) -> None:
    prefix = f"cli-{uuid.uuid4().hex[:8]}:"
    env = clean_env(
        prefix,
        REDIS_URL=redis_server.url,
        DARKROOM_KEY_DEFAULT_RATE_PER_MIN="7",
        DARKROOM_KEY_DEFAULT_MAX_COST="none",
    )
    store = TenantStore(redis, Keys(prefix))
    limited = darkroom(
        tmp_path,
        env,
        "create",
        "--name",
        "render-farm",
        "--rate-per-min",
        "30",
        "--max-queued",
        "4",
        "--max-priority",
        "low",
        "--max-cost",
        "250.5",
    )
    assert limited.returncode == 0, limited.stderr
    tenant = await store.verify(limited.stdout.strip().splitlines()[-1])
    assert tenant is not None
    assert tenant.limits == KeyLimits(
        rate_per_min=30, max_queued=4, max_priority="low", max_cost=250.5
    )
    # Left out: the settings' defaults (DARKROOM_KEY_DEFAULT_*); "none": no limit.
    plain = darkroom(tmp_path, env, "create", "--name", "plain", "--max-queued", "none")
    assert plain.returncode == 0, plain.stderr
    tenant = await store.verify(plain.stdout.strip().splitlines()[-1])
    assert tenant is not None
    assert tenant.limits == KeyLimits(
        rate_per_min=7, max_queued=None, max_priority="normal", max_cost=None
    )

    listed = darkroom(tmp_path, env, "list")
    header, *lines = listed.stdout.splitlines()
    assert header.split()[:6] == ["NAME", "ADMIN", "RATE/MIN", "QUEUED", "PRIORITY", "MAX"]
    rows = {line.split()[0]: line.split() for line in lines}
    assert rows["render-farm"][:6] == ["render-farm", "no", "30", "4", "low", "250.5"]
    assert rows["plain"][:6] == ["plain", "no", "7", "-", "normal", "-"]

    for bad in (["--rate-per-min", "0"], ["--max-cost", "lots"], ["--max-priority", "urgent"]):
        refused = darkroom(tmp_path, env, "create", "--name", "bad", *bad)
        assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr
    assert "bad" not in {info.name for info in await store.list()}


async def test_webhook_secret_is_printed_rotated_and_the_old_one_kept_for_the_grace(
    tmp_path: Path, redis_server: RedisServer, redis: Redis
) -> None:
    prefix = f"cli-{uuid.uuid4().hex[:8]}:"
    env = clean_env(prefix, REDIS_URL=redis_server.url)
    store = TenantStore(redis, Keys(prefix))
    assert darkroom(tmp_path, env, "create", "--name", "hooks").returncode == 0

    first = darkroom(tmp_path, env, "webhook-secret", "hooks")
    assert first.returncode == 0, first.stderr
    secret = first.stdout.strip().splitlines()[-1]
    assert secret.startswith("whsec_")
    again = darkroom(tmp_path, env, "webhook-secret", "hooks")
    assert again.stdout.strip().splitlines()[-1] == secret

    rotated = darkroom(tmp_path, env, "webhook-secret", "hooks", "--rotate")
    assert rotated.returncode == 0, rotated.stderr
    new = rotated.stdout.strip().splitlines()[-1]
    assert new.startswith("whsec_") and new != secret
    assert "previous secret stays valid until" in rotated.stdout
    assert await store.webhook_secrets("hooks") == [new, secret]

    missing = darkroom(tmp_path, env, "webhook-secret", "nobody")
    assert missing.returncode == 1 and "no key named" in missing.stderr
    # With no grace at all, a rotation retires the old secret at once.
    instant = clean_env(prefix, REDIS_URL=redis_server.url, DARKROOM_WEBHOOK_SECRET_GRACE_S="0")
    latest = darkroom(tmp_path, instant, "webhook-secret", "hooks", "--rotate")
    assert await store.webhook_secrets("hooks") == [latest.stdout.strip().splitlines()[-1]]
