"""Darkroom's services as real subprocesses, started through the ``darkroom`` CLI."""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from common.redis_server import free_port
from tests.support.waiting import wait_for

REPO_ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 300.0


@dataclass
class Stack:
    """One deployment: its own key prefix on a shared Redis, its own port and output directory."""

    name: str
    workdir: Path
    env: dict[str, str]
    port: int = field(default_factory=free_port)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    # Where each service's current run starts in its log (a restarted service appends).
    _log_starts: dict[str, int] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def prefix(self) -> str:
        return self.env["DARKROOM_KEY_PREFIX"]

    def start(self, *services: str, env: dict[str, str] | None = None, wait: bool = True) -> None:
        """Start services by command name; ``worker:b`` starts a second ``worker`` named b.
        ``env`` adds to the stack's environment for these processes only. ``wait=False``
        returns without waiting for them to be ready (one that waits for storage, say)."""
        for service in services:
            command = service.split(":")[0]
            log = (self.workdir / f"{service.replace(':', '-')}.log").open("ab")
            self._log_starts[service] = log.tell()
            self.processes[service] = subprocess.Popen(
                [sys.executable, "-m", "common.cli", command],
                cwd=self.workdir,
                env=self.env | (env or {}),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        if not wait:
            return
        try:
            for service in services:
                command = service.split(":")[0]
                if command in ("gateway", "status"):
                    wait_for(self._healthy, timeout_s=READY_TIMEOUT_S, what=f"{self.name} health")
                else:  # the worker and the uploader log "<service>.ready" once they consume
                    wait_for(
                        functools.partial(self._ready, service, f'"{command}.ready"'),
                        timeout_s=READY_TIMEOUT_S,
                        what=f"{self.name} {service} ready",
                    )
        except TimeoutError:
            # The fixture that asked never gets the stack to stop: stop it here, or its
            # processes outlive the test run.
            self.stop_all()
            raise

    def stop(
        self, service: str, sig: signal.Signals = signal.SIGTERM, timeout_s: float = 30
    ) -> int:
        process = self.processes.pop(service)
        if process.poll() is None:
            process.send_signal(sig)
        return process.wait(timeout=timeout_s)

    def stop_all(self) -> None:
        for service, process in list(self.processes.items()):
            try:
                self.stop(service)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    def log(self, service: str) -> str:
        path = self.workdir / f"{service.replace(':', '-')}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def _ready(self, service: str, marker: str) -> bool:
        self._check_alive()
        path = self.workdir / f"{service.replace(':', '-')}.log"
        run = path.read_bytes()[self._log_starts.get(service, 0) :] if path.exists() else b""
        return marker.encode() in run

    def _check_alive(self) -> None:
        for service, process in self.processes.items():
            if process.poll() is not None:
                raise RuntimeError(f"{self.name} {service} exited:\n{self.log(service)[-3000:]}")

    def _healthy(self) -> bool:
        self._check_alive()
        try:
            return httpx.get(self.base_url + "/", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False


def stack_env(
    *,
    redis_url: str,
    prefix: str,
    models_file: Path,
    workdir: Path,
    port: int,
    extra: dict[str, str] | None = None,
) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DARKROOM_", "REDIS_", "AWS_", "S3_"))
    }
    env.update(
        {
            "REDIS_URL": redis_url,
            "DARKROOM_KEY_PREFIX": prefix,
            "DARKROOM_MODELS_FILE": str(models_file),
            "DARKROOM_OUTPUT_DIR": str(workdir / "output"),
            "DARKROOM_PORT": str(port),
            "DARKROOM_HOST": "127.0.0.1",
            # The services default to keys; a test that tests keys passes DARKROOM_AUTH=keys.
            "DARKROOM_AUTH": "off",
            "DARKROOM_PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
            "DARKROOM_LOG_FORMAT": "json",
            "DARKROOM_BLOCK_MS": "200",
            "DARKROOM_SSE_RESYNC_S": "1",
            "HF_HUB_OFFLINE": "1",
            # The checkout first; then whatever the caller's path held (packages installed
            # beside the interpreter's own, as on a machine without network).
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p
            ),
        }
    )
    env.update(extra or {})
    return env
