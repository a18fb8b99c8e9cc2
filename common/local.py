"""``darkroom up``: the whole service on one machine, through the same Redis paths as production.

With no Redis configured it starts an embedded ``redis-server`` (its URL in
``.darkroom/redis.url`` while it runs, for ``darkroom keys``); with no model catalogue it
writes tiny demo checkpoints (once) and serves every route from them. The gateway listens on
127.0.0.1 with auth off unless ``DARKROOM_HOST`` / ``DARKROOM_AUTH`` say otherwise. Gateway,
worker, uploader and notifier run as child processes, exactly as ``darkroom gateway|worker|
uploader|notifier`` would on Kubernetes. Webhooks of its jobs are signed with the secret in
``.darkroom/webhook-secret`` (made once) unless ``DARKROOM_WEBHOOK_SECRET`` is set.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from pydantic import Field

from common.catalog import Catalog, demo_catalog, write_catalog
from common.cpus import available_cpus, format_cpu_list, pin_process, placement
from common.logging import get_logger
from common.redis_server import RedisServer
from common.settings import KeySettings
from common.tenants import AuthMode, new_webhook_secret

log = get_logger(__name__)

SERVICES = ("gateway", "worker", "uploader", "notifier")
STOP_GRACE_S = 30.0
# Where a running ``darkroom up`` leaves its embedded Redis's URL, under the state directory.
REDIS_URL_FILE = "redis.url"
# The secret that signs the webhooks of jobs made with auth off, made once, under the state dir.
WEBHOOK_SECRET_FILE = "webhook-secret"


class LocalSettings(KeySettings):
    # Embedded Redis data and demo checkpoints live here.
    state_dir: Path = Path(".darkroom")
    port: int = Field(default=8000, ge=1, le=65535)
    # One machine, one user: no keys, and only this machine can reach the gateway.
    auth: AuthMode = "off"
    host: str = "127.0.0.1"


def default_torch_threads() -> int:
    """The worker's torch threads when it shares the machine with every other service: half the
    cores it may use, which ``up`` gives the render to itself (common/cpus.py). Its operator
    threads wait for each other spinning, so a core taken by the gateway, Redis or the uploader
    in the middle of an operator stalls the whole render."""
    return max(1, len(available_cpus()) // 2)


def consumer_probe_ports(first: str | None) -> dict[str, dict[str, str]]:
    """With ``DARKROOM_HEALTH_PORT`` set, each consumer serves /livez, /readyz and /metrics on a
    port of its own: the worker on that one, the uploader and the notifier on the next two."""
    if not first:
        return {}
    return {
        name: {"DARKROOM_HEALTH_PORT": str(int(first) + offset)}
        for offset, name in enumerate(("worker", "uploader", "notifier"))
    }


def running_redis_url(state_dir: Path) -> str | None:
    """The embedded Redis of a ``darkroom up`` running with this state directory, if any."""
    path = state_dir / REDIS_URL_FILE
    if not path.is_file():
        return None
    return path.read_text().strip() or None


def redis_configured() -> bool:
    return any(
        name in os.environ
        for name in ("REDIS_URL", "REDIS_HOST", "DARKROOM_REDIS_URL", "DARKROOM_REDIS_HOST")
    )


def missing_checkpoints(catalog: Catalog) -> list[Path]:
    """The catalogue's checkpoint folders that hold no complete checkpoint (``save_pretrained``
    writes ``model_index.json`` last)."""
    folders = [Path(w) for r in catalog.routes.values() for w in (r.weights, r.edit_weights) if w]
    return [
        folder for folder in dict.fromkeys(folders) if not (folder / "model_index.json").exists()
    ]


def _demo_models(settings: LocalSettings) -> Path:
    models_dir = (settings.state_dir / "models").resolve()
    catalog = demo_catalog(models_dir)
    missing = missing_checkpoints(catalog)
    if missing:
        # Writes only the checkpoints that are missing: a folder from an older version gains the
        # new routes' models and keeps its own.
        log.info("demo.models.writing", dir=str(models_dir), missing=[p.name for p in missing])
        subprocess.run(
            [sys.executable, "-m", "common.cli", "models", "make-tiny", str(models_dir)], check=True
        )
    catalog_file = settings.state_dir.resolve() / "models.toml"
    write_catalog(catalog, catalog_file)
    return catalog_file


def webhook_secret(state_dir: Path) -> tuple[str, Path]:
    """The local webhook signing secret, made on first use and kept (owner-readable only)."""
    path = state_dir.resolve() / WEBHOOK_SECRET_FILE
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(new_webhook_secret() + "\n")
    return path.read_text().strip(), path


def up(settings: LocalSettings) -> int:
    env = dict(os.environ)
    redis_server = None
    url_file = settings.state_dir.resolve() / REDIS_URL_FILE
    if not redis_configured():
        redis_server = RedisServer(settings.state_dir.resolve() / "redis", appendonly=True)
        redis_server.start()
        env["REDIS_URL"] = redis_server.url
        url_file.write_text(redis_server.url + "\n")
        log.info("redis.embedded", url=redis_server.url, binary=redis_server.binary)
    if settings.models_file is None:
        env["DARKROOM_MODELS_FILE"] = str(_demo_models(settings))
    env.setdefault("DARKROOM_PUBLIC_BASE_URL", f"http://localhost:{settings.port}")
    env["DARKROOM_PORT"] = str(settings.port)
    env["DARKROOM_HOST"] = settings.host
    env["DARKROOM_AUTH"] = settings.auth
    env.pop("DARKROOM_STATE_DIR", None)
    env.setdefault("DARKROOM_TORCH_THREADS", str(default_torch_threads()))
    try:
        cores = placement(int(env["DARKROOM_TORCH_THREADS"]), env.get("DARKROOM_RENDER_CPUS"))
    except ValueError:  # malformed: left for the worker's settings to refuse, by name
        cores = None
    if cores is not None:
        env["DARKROOM_RENDER_CPUS"] = format_cpu_list(cores.render)
    if settings.auth == "off" and settings.host == "127.0.0.1":
        # One user on one machine: webhooks may go to a receiver on this machine too.
        env.setdefault("DARKROOM_WEBHOOK_ALLOW_NETS", "127.0.0.0/8,::1/128")
    probe_ports = consumer_probe_ports(env.pop("DARKROOM_HEALTH_PORT", None))
    secret_from = "DARKROOM_WEBHOOK_SECRET"
    if "DARKROOM_WEBHOOK_SECRET" not in env:
        env["DARKROOM_WEBHOOK_SECRET"], secret_path = webhook_secret(settings.state_dir)
        secret_from = str(secret_path)

    children = {
        name: subprocess.Popen(
            [sys.executable, "-m", "common.cli", name], env={**env, **probe_ports.get(name, {})}
        )
        for name in SERVICES
    }
    if cores is not None:
        # The worker on its own cores (it pins itself there too); all else shares the rest.
        for name, child in children.items():
            pin_process(child.pid, cores.render if name == "worker" else cores.services)
        if redis_server is not None and redis_server.process is not None:
            pin_process(redis_server.process.pid, cores.services)
    log.info(
        "darkroom.up",
        url=f"http://localhost:{settings.port}",
        docs=f"http://localhost:{settings.port}/docs",
        host=settings.host,
        auth=settings.auth,
        webhook_secret=secret_from,
        webhook_allow_nets=env.get("DARKROOM_WEBHOOK_ALLOW_NETS", ""),
        probe_ports={name: int(port["DARKROOM_HEALTH_PORT"]) for name, port in probe_ports.items()},
        render_cpus=format_cpu_list(cores.render) if cores else None,
        service_cpus=format_cpu_list(cores.services) if cores else None,
        message=f"listening on {settings.host}:{settings.port} with auth {settings.auth}"
        + (
            " (this machine only; no API keys needed)"
            if settings.auth == "off" and settings.host == "127.0.0.1"
            else ""
        ),
    )
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    exit_code = 0
    try:
        while not stopping:
            exited = {name: p.returncode for name, p in children.items() if p.poll() is not None}
            if exited:
                log.error("darkroom.service_exited", exited=exited)
                exit_code = 1
                break
            time.sleep(0.2)
    finally:
        for child in children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for child in children.values():
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
        if redis_server is not None:
            url_file.unlink(missing_ok=True)
            redis_server.stop()
    return exit_code
