"""API keys for tests, made the way an operator makes them: ``darkroom keys create``."""

from __future__ import annotations

import subprocess
import sys

from tests.support.stack import Stack


def create_key(
    stack: Stack, name: str, *, admin: bool = False, options: tuple[str, ...] = ()
) -> str:
    """``darkroom keys create`` against the stack's Redis (``options`` such as
    ``("--max-priority", "high")``); the key is its last line."""
    out = subprocess.run(
        [sys.executable, "-m", "common.cli", "keys", "create", "--name", name]
        + (["--admin"] if admin else [])
        + list(options),
        cwd=stack.workdir,
        env=stack.env,
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip().splitlines()[-1]


# A tenant of a load test: any class, and no rate or queue limit of its own.
UNLIMITED = ("--max-priority", "high", "--rate-per-min", "none", "--max-queued", "none")


def tenant_names(count: int, prefix: str = "tenant") -> list[str]:
    return [f"{prefix}-{n}" for n in range(count)]


def tenant_keys(stack: Stack, count: int, *, prefix: str = "tenant") -> list[str]:
    """``count`` unlimited keys, one tenant each (``tenant_names``)."""
    return [create_key(stack, name, options=UNLIMITED) for name in tenant_names(count, prefix)]


def webhook_secret(stack: Stack, name: str) -> str:
    """The tenant's webhook signing secret, as ``darkroom keys webhook-secret`` shows it (made on
    first ask)."""
    out = subprocess.run(
        [sys.executable, "-m", "common.cli", "keys", "webhook-secret", name],
        cwd=stack.workdir,
        env=stack.env,
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip().splitlines()[-1]
