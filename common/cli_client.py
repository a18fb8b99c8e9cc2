"""``darkroom generate`` and ``darkroom jobs status|watch|cancel``: the Python client
(``darkroom_client``) on the command line, with a progress bar on a terminal.

Where the gateway is and the key to use come from ``--url``/``--api-key``, else ``DARKROOM_URL``
(default http://localhost:8000) and ``DARKROOM_API_KEY``. On a terminal the job's progress is a bar
(step, queue position, ETA); otherwise plain lines on stderr. Saved paths go to stdout, one a line.
Ctrl-C cancels the job on the server, then exits 130.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
from pathlib import Path
from typing import Any, Protocol

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)

from common.settings import ClientSettings
from darkroom_client import (
    TASKS,
    ApiError,
    Client,
    Conflict,
    DarkroomError,
    Event,
    JobEvent,
    PreviewEvent,
    QueueEvent,
)

EXIT_FAILED = 1
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it
_STEP = re.compile(r"step (\d+)/(\d+)")


def add_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    generate = commands.add_parser(
        "generate", help="submit a job to a gateway, show its progress, save its results"
    )
    generate.add_argument("prompt")
    generate.add_argument(
        "--model", required=True, metavar="ROUTE", help="the model route (GET /api/models)"
    )
    generate.add_argument("--task", choices=TASKS, default="t2i")
    generate.add_argument(
        "--image", type=Path, metavar="FILE", help="the input image (i2i, i2v, multi-angle)"
    )
    generate.add_argument("--negative-prompt", metavar="TEXT")
    generate.add_argument("--width", type=int, metavar="W")
    generate.add_argument("--height", type=int, metavar="H")
    generate.add_argument("--steps", type=int, dest="num_inference_steps", metavar="N")
    generate.add_argument("--guidance", type=float, dest="guidance_scale", metavar="G")
    generate.add_argument("--seed", type=int, metavar="S")
    generate.add_argument(
        "--strength", type=float, metavar="X", help="i2i: how far from the input (0-1]"
    )
    generate.add_argument(
        "--frames", type=int, dest="num_frames", metavar="N", help="video: frames"
    )
    generate.add_argument("--fps", type=int, metavar="N", help="video: frames per second")
    generate.add_argument(
        "--angles", help="multi-angle: comma-separated camera angles (default: the route's)"
    )
    generate.add_argument(
        "--out", type=Path, default=Path("."), metavar="DIR", help="where results go"
    )
    _connection(generate)

    jobs = commands.add_parser("jobs", help="a job on a gateway: status, watch, cancel")
    actions = jobs.add_subparsers(dest="jobs_command", required=True, metavar="COMMAND")
    for name, text in (
        ("status", "print the job's status as JSON"),
        ("watch", "follow the job to its end; print its result URLs"),
        ("cancel", "cancel a queued or running job"),
    ):
        action = actions.add_parser(name, help=text)
        action.add_argument("job_id")
        _connection(action)


def _connection(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", help="the gateway (default: $DARKROOM_URL or localhost:8000)")
    parser.add_argument("--api-key", help="default: $DARKROOM_API_KEY")


def run(args: argparse.Namespace, settings: ClientSettings) -> int:
    client = Client(args.url or settings.url, args.api_key or settings.api_key)
    try:
        if args.command == "generate":
            return _generate(client, args)
        return _job_command(client, args)
    except ApiError as exc:
        return _error(_describe(exc))
    except DarkroomError as exc:
        return _error(str(exc))
    finally:
        client.close()


def _generate(client: Client, args: argparse.Namespace) -> int:
    params: dict[str, Any] = {
        name: getattr(args, name)
        for name in (
            "negative_prompt",
            "width",
            "height",
            "num_inference_steps",
            "guidance_scale",
            "seed",
            "strength",
            "num_frames",
            "fps",
        )
        if getattr(args, name) is not None
    }
    if args.angles:
        params["angles"] = [a.strip() for a in args.angles.split(",") if a.strip()]
    if args.task in ("i2i", "i2v") and args.image is None:
        return _error(f"--task {args.task} needs --image FILE")
    if args.image is not None and not args.image.is_file():
        return _error(f"{args.image}: no such file")
    try:
        job = client.submit(args.model, args.prompt, task=args.task, image=args.image, **params)
    except ValueError as exc:
        return _error(str(exc))
    display = _display()
    display.line(f"job {job.id} submitted to {args.model}")
    try:
        ended = _follow(client, job.id, display)
    except KeyboardInterrupt:
        display.close()
        _cancel_quietly(client, job.id)
        print(f"darkroom: canceled job {job.id}", file=sys.stderr)
        return EXIT_INTERRUPTED
    if ended.status != "completed":
        return _error(f"job {job.id} {ended.status}: {ended.error or ended.message}")
    for path in client.download(client.status(job.id), args.out):
        print(path)
    return 0


def _job_command(client: Client, args: argparse.Namespace) -> int:
    job_id = args.job_id
    if args.jobs_command == "status":
        print(json.dumps(client.status(job_id).model_dump(mode="json"), indent=2))
        return 0
    if args.jobs_command == "cancel":
        state = client.cancel(job_id)
        print(f"job {state.id} {state.status}")
        return 0
    try:
        ended = _follow(client, job_id, _display())
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED  # watching only: the job goes on
    if ended.status != "completed":
        return _error(f"job {job_id} {ended.status}: {ended.error or ended.message}")
    for url in client.status(job_id).result_urls:
        print(url)
    return 0


def _follow(client: Client, job_id: str, display: Display) -> JobEvent:
    """Show the job's feed until its terminal event, which is returned."""
    last: JobEvent | None = None
    with display:
        for event in client.watch(job_id):
            display.show(event)
            if isinstance(event, JobEvent):
                last = event
    if last is None or not last.terminal:  # the feed was past its end already
        state = client.status(job_id)
        return JobEvent(
            seq=0,
            job_id=job_id,
            status=state.status,
            progress=state.progress,
            message=state.message,
            result_urls=state.result_urls,
            error=state.error,
            ts=0.0,
        )
    return last


def _cancel_quietly(client: Client, job_id: str) -> None:
    with contextlib.suppress(Conflict):  # it ended meanwhile
        client.cancel(job_id)


def _describe(exc: ApiError) -> str:
    return f"{exc.status_code} {exc.code}: {exc.message}"


def _error(message: str) -> int:
    print(f"darkroom: error: {message}", file=sys.stderr)
    return EXIT_FAILED


# --- what the user sees ------------------------------------------------------------------


class Display(Protocol):
    def __enter__(self) -> Display: ...
    def __exit__(self, *exc: object) -> None: ...
    def show(self, event: Event) -> None: ...
    def line(self, text: str) -> None: ...
    def close(self) -> None: ...


def _display() -> Display:
    return BarDisplay() if sys.stdout.isatty() else LineDisplay()


def _detail(event: Event) -> str | None:
    if isinstance(event, QueueEvent):
        eta = f", about {event.eta_s:.0f} s" if event.eta_s is not None else ""
        return f"queued: {event.queue_position} ahead{eta}"
    if isinstance(event, PreviewEvent):
        return f"step {event.step}/{event.total_steps}"
    found = _STEP.search(event.message)
    return f"step {found[1]}/{found[2]}" if found else event.message


class BarDisplay:
    """A rich progress bar: status, bar, percent, step or queue place, time left."""

    def __init__(self) -> None:
        self.console = Console()
        self.progress = Progress(
            TextColumn("[bold]{task.description:<10}"),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[detail]}"),
            TimeRemainingColumn(),
            console=self.console,
        )
        self.task: TaskID = self.progress.add_task("pending", total=100, detail="")

    def __enter__(self) -> BarDisplay:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.progress.stop()

    def line(self, text: str) -> None:
        self.console.print(text, highlight=False, markup=False)

    def show(self, event: Event) -> None:
        detail = _detail(event)
        if isinstance(event, JobEvent):
            self.progress.update(
                self.task, description=event.status, completed=event.progress, detail=detail
            )
        else:
            self.progress.update(self.task, detail=detail)


class LineDisplay:
    """Plain lines on stderr, one per change, for logs and pipes."""

    def __init__(self) -> None:
        self._last = ""

    def __enter__(self) -> LineDisplay:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def close(self) -> None:
        pass

    def line(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    def show(self, event: Event) -> None:
        if isinstance(event, PreviewEvent):
            return  # the step is in the job events too
        text = (
            f"{event.status} {event.progress}% {_detail(event)}"
            if isinstance(event, JobEvent)
            else str(_detail(event))
        )
        if text != self._last:
            self.line(text)
            self._last = text
