"""The ``darkroom`` command: run everything locally (``up``) or one service, as Kubernetes does;
submit and follow jobs on a gateway (``generate``, ``jobs``)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from pydantic import ValidationError

from common import cli_client, cli_keys
from common.logging import configure, get_logger
from common.settings import CommonSettings, SettingsError

log = get_logger(__name__)
S = TypeVar("S", bound=CommonSettings)


def _load_all_settings_classes() -> None:
    # Every service's settings class must be known before any is built, so that a DARKROOM_*
    # variable meant for another service is not mistaken for a typo.
    import common.local  # noqa: F401
    import gateway.settings  # noqa: F401
    import gpu_worker.settings  # noqa: F401
    import notifier.settings  # noqa: F401
    import uploader.settings  # noqa: F401


def _build(cls: type[S]) -> S:
    try:
        settings = cls()
    except (ValidationError, SettingsError) as exc:
        sys.exit(f"darkroom: invalid settings: {exc}")
    configure(settings.log_format, settings.log_level)
    return settings


def _run(main: Coroutine[Any, Any, None]) -> None:
    """A service's main coroutine on uvloop where it is installed (uvicorn's choice for the
    gateway too): its socket I/O and callbacks cost less CPU than the stock loop's."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


def _gateway(role: str) -> None:
    from gateway.server import serve
    from gateway.settings import GatewaySettings

    serve(_build(GatewaySettings), role="status" if role == "status" else "gateway")


def _worker() -> None:
    from gpu_worker.main import run
    from gpu_worker.settings import WorkerSettings

    _run(run(_build(WorkerSettings)))


def _uploader() -> None:
    from uploader.main import run
    from uploader.settings import UploaderSettings

    _run(run(_build(UploaderSettings)))


def _notifier() -> None:
    from notifier.main import run
    from notifier.settings import NotifierSettings

    _run(run(_build(NotifierSettings)))


def _up() -> None:
    from common.local import LocalSettings, up

    sys.exit(up(_build(LocalSettings)))


def _keys(args: argparse.Namespace) -> None:
    from common.cli_keys import run
    from common.local import LocalSettings

    sys.exit(run(args, _build(LocalSettings)))


def _client(args: argparse.Namespace) -> None:
    from common.settings import ClientSettings

    try:
        settings = ClientSettings()
    except (ValidationError, SettingsError) as exc:
        sys.exit(f"darkroom: invalid settings: {exc}")
    sys.exit(cli_client.run(args, settings))


def _make_tiny(out_dir: Path) -> None:
    from gpu_worker.tiny import make_all

    for family, path in make_all(out_dir).items():
        print(f"{family}: {path}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="darkroom", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser(
        "up", help="gateway, worker, uploader and notifier with embedded Redis and demo models"
    )
    commands.add_parser(
        "gateway", help="the complete HTTP API (submit, status, SSE, docs, /output)"
    )
    commands.add_parser("status", help="status and SSE routes only")
    commands.add_parser("worker", help="a GPU worker")
    commands.add_parser("uploader", help="the uploader")
    commands.add_parser("notifier", help="the webhook notifier")
    models = commands.add_parser("models", help="model utilities")
    model_commands = models.add_subparsers(dest="models_command", required=True, metavar="COMMAND")
    tiny = model_commands.add_parser("make-tiny", help="write tiny random-weight checkpoints")
    tiny.add_argument("out_dir", type=Path)
    cli_keys.add_parser(commands)
    cli_client.add_parsers(commands)
    args = parser.parse_args(argv)

    _load_all_settings_classes()
    match args.command:
        case "up":
            _up()
        case "gateway" | "status":
            _gateway(args.command)
        case "worker":
            _worker()
        case "uploader":
            _uploader()
        case "notifier":
            _notifier()
        case "models":
            _make_tiny(args.out_dir)
        case "keys":
            _keys(args)
        case "generate" | "jobs":
            _client(args)


if __name__ == "__main__":
    main()
