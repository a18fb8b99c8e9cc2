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
