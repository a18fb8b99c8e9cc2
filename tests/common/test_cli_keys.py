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
from common.tenants import Tenant, TenantStore
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
    assert await store.verify(key) == Tenant(name="ci-bot", admin=False)
    assert await store.verify(admin_key) == Tenant(name="ops", admin=True)

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
