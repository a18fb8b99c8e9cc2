"""SSE fan-out: one status process, thousands of watchers, live job events written to Redis.

A real ``redis-server`` and one ``darkroom status`` process; K running jobs driven straight through
``JobStore.emit`` (no worker), M SSE clients spread over them. Every client checks that it sees each
event after its snapshot, in order, and measures delivery latency as receive time minus the event's
``ts`` (stamped by the emitter just before the Lua call), on the same machine clock.

The clients are raw asyncio protocols (no HTTP library) split over a few processes so that they
cost little next to the server; a small "probe" process with a handful of feeds on an otherwise
idle event loop shows how much of the bulk clients' latency is their own queueing.

    uv run python -m bench.sse_fanout --watchers 2000 --jobs 100 --interval-ms 250 --duration-s 60
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import multiprocessing as mp
import os
import platform
import queue
import resource
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from array import array
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

from common.jobs import JobStore
from common.keys import Keys
from common.redis_server import RedisServer, free_port
from common.schemas import JobSpec, JobStatus, RenderParams, Task, utcnow
from gateway.settings import GatewaySettings

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_FILE = REPO_ROOT / "bench" / "results" / "sse_fanout.json"
GOAL_WATCHERS = 2000
GOAL_P99_MS = 100.0
GOAL_RSS_MB = 300.0
KEY_PREFIX = "bench:"
PATHS = ("/api/{}/events", "/v1/jobs/{}/events")  # both seed APIs, alternately
TERMINAL = {"completed", "failed", "canceled"}
READY_TIMEOUT_S = 60.0
CONNECT_CONCURRENCY = 64  # per client process: stay well inside the server's listen backlog
SAMPLE_EVERY_S = 0.25
CLK_TCK = os.sysconf("SC_CLK_TCK")
OTHER_LOAD_WARN_PCT = 10.0


def raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


# --- /proc readings (Linux): no psutil needed -------------------------------------------------


def rss_mb(pid: int, field_name: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1]) / 1024
    raise LookupError(field_name)


def cpu_s(pid: int) -> float:
    # utime and stime, fields 14 and 15; the command name (field 2) may hold spaces.
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_busy_s() -> float:
    """CPU seconds all cores spent busy (not idle, not waiting on I/O) since boot."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / CLK_TCK


def wait_until_quiet(max_wait_s: float, window_s: float = 2.0) -> float:
    """Wait (up to ``max_wait_s``) for the machine's other load to drop below the warning
    level, so a shared machine's neighbours do not decide the figures; returns the load seen."""
    deadline = time.monotonic() + max_wait_s
    while True:
        busy0 = machine_busy_s()
        time.sleep(window_s)
        load_pct = 100 * (machine_busy_s() - busy0) / window_s
        if load_pct < OTHER_LOAD_WARN_PCT or time.monotonic() > deadline:
            return load_pct


def self_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# --- the SSE client: one asyncio.Protocol per feed, HTTP/1.1 chunked, sse-starlette's CRLFs -----


@dataclass
class FeedResult:
    job_id: str
    snapshot_seq: int = -1
    last_seq: int = -1
    events: int = 0  # after the snapshot
    out_of_order: int = 0
    terminal: bool = False
    terminal_ms: float = -1.0  # the terminal event's latency: it arrives among closing feeds
    closed_by_server: bool = False
    error: str = ""


class FeedClient(asyncio.Protocol):
    def __init__(
        self,
        request: bytes,
        result: FeedResult,
        latencies_ms: array[float],
        emitted_at: array[float],
        on_snapshot: asyncio.Future[None],
        done: asyncio.Future[None],
    ) -> None:
        self.request = request
        self.result = result
        self.latencies_ms = latencies_ms
        self.emitted_at = emitted_at
        self.on_snapshot = on_snapshot
        self.done = done
        self.raw = bytearray()
        self.body = bytearray()  # de-chunked, not yet split into events
        self.in_head = True
        self.chunk_left = 0  # data bytes left in the current chunk
        self.crlf_left = 0  # the CRLF closing the current chunk
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        now = time.time()  # first thing: the latency is the server's, not our parsing
        raw = self.raw
        raw += data
        if self.in_head:
            end = raw.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(raw[:end]).lower()
            del raw[: end + 4]
            self.in_head = False
            if not head.startswith(b"http/1.1 200") or b"transfer-encoding: chunked" not in head:
                self._fail(head.split(b"\r\n", 1)[0].decode(errors="replace"))
                return
        while raw:
            if self.crlf_left:
                take = min(self.crlf_left, len(raw))
                del raw[:take]
                self.crlf_left -= take
                continue
            if not self.chunk_left:
                line_end = raw.find(b"\r\n")
                if line_end < 0:
                    break
                size = int(raw[:line_end], 16)
                del raw[: line_end + 2]
                if size == 0:
                    break  # the end of the response; the server closes (Connection: close)
                self.chunk_left = size
            take = min(self.chunk_left, len(raw))
            self.body += raw[:take]
            del raw[:take]
            self.chunk_left -= take
            if not self.chunk_left:
                self.crlf_left = 2
        self._events(now)

    def _events(self, now: float) -> None:
        body = self.body
        while (end := body.find(b"\r\n\r\n")) >= 0:
            block = bytes(body[:end])
            del body[: end + 4]
            seq, data = -1, b""
            for line in block.split(b"\r\n"):
                if line.startswith(b"id:"):
                    seq = int(line[3:])
                elif line.startswith(b"data:"):
                    data = line[5:]
            if not data:
                continue  # a ping comment
            event = json.loads(data)
            result = self.result
            if result.snapshot_seq < 0:
                result.snapshot_seq = result.last_seq = seq
                if not self.on_snapshot.done():
                    self.on_snapshot.set_result(None)
            else:
                if seq != result.last_seq + 1:
                    result.out_of_order += 1
                result.last_seq = seq
                result.events += 1
                if event["status"] in TERMINAL:
                    result.terminal_ms = (now - event["ts"]) * 1000
                else:
                    self.latencies_ms.append((now - event["ts"]) * 1000)
                    self.emitted_at.append(event["ts"])
            if event["status"] in TERMINAL:
                result.terminal = True

    def _fail(self, error: str) -> None:
        self.result.error = error
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.result.closed_by_server = self.result.terminal and exc is None
        if exc is not None and not self.result.error:
            self.result.error = repr(exc)
        for future in (self.on_snapshot, self.done):
            if not future.done():
                future.set_result(None)


def feed_request(port: int, path: str) -> bytes:
    # Connection: close, so the end of the feed is the server closing the socket.
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: text/event-stream\r\n"
        "Connection: close\r\n\r\n"
    ).encode()


@dataclass
class ClientReport:
    name: str
    feeds: list[FeedResult]
    latencies_ms: bytes
    emitted_at: bytes
    connect_s: float
    cpu_events_s: float  # CPU spent from "all snapshots in" to "all feeds closed"
    loop: str
    pubsub_ms: bytes = b""  # the probe's bare PSUBSCRIBE: Redis and emitter, no status service


async def pubsub_baseline(redis_url: str, latencies_ms: array[float]) -> asyncio.Task[None]:
    """A bare PSUBSCRIBE on the channels the status service listens to, subscribed on return."""
    from redis.asyncio import Redis

    redis = Redis.from_url(redis_url)
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    await pubsub.psubscribe(Keys(KEY_PREFIX).progress_pattern)

    async def listen() -> None:
        try:
            async for message in pubsub.listen():
                now = time.time()
                if message["type"] == "pmessage":
                    latencies_ms.append((now - json.loads(message["data"])["ts"]) * 1000)
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]  # redis-py: no hints
            await redis.aclose()

    return asyncio.create_task(listen())


async def _run_clients(
    name: str,
    port: int,
    watchers: list[tuple[str, str]],
    deadline_s: float,
    outbox: Any,
    redis_url: str | None,
) -> ClientReport:
    loop = asyncio.get_running_loop()
    latencies_ms, emitted_at, pubsub_ms = array("d"), array("d"), array("d")
    baseline = None if redis_url is None else await pubsub_baseline(redis_url, pubsub_ms)
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
    feeds: list[FeedResult] = []
    dones: list[asyncio.Future[None]] = []

    async def open_feed(job_id: str, path: str) -> None:
        result = FeedResult(job_id)
        feeds.append(result)
        snapshot, done = loop.create_future(), loop.create_future()
        dones.append(done)
        request = feed_request(port, path)
        async with gate:
            try:
                await loop.create_connection(
                    lambda: FeedClient(request, result, latencies_ms, emitted_at, snapshot, done),
                    "127.0.0.1",
                    port,
                )
                await asyncio.wait_for(snapshot, READY_TIMEOUT_S)
            except (OSError, TimeoutError) as exc:
                result.error = result.error or repr(exc)
                if not done.done():
                    done.set_result(None)

    started = time.monotonic()
    await asyncio.gather(*(open_feed(job_id, path) for job_id, path in watchers))
    connect_s = time.monotonic() - started
    outbox.put(("ready", name, sum(1 for f in feeds if f.snapshot_seq >= 0)))
    cpu_ready = self_cpu_s()
    await asyncio.wait(dones, timeout=deadline_s)
    cpu_events_s = self_cpu_s() - cpu_ready
    if baseline is not None:
        baseline.cancel()
        await asyncio.gather(baseline, return_exceptions=True)
    return ClientReport(
        name=name,
        feeds=feeds,
        latencies_ms=latencies_ms.tobytes(),
        emitted_at=emitted_at.tobytes(),
        connect_s=connect_s,
        cpu_events_s=cpu_events_s,
        loop=type(loop).__module__,
        pubsub_ms=pubsub_ms.tobytes(),
    )


def client_process(
    name: str,
    port: int,
    watchers: list[tuple[str, str]],
    deadline_s: float,
    outbox: Any,
    redis_url: str | None = None,
) -> None:
    raise_fd_limit()
    loop_factory: Callable[[], asyncio.AbstractEventLoop]
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:
        loop_factory = asyncio.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        report = runner.run(_run_clients(name, port, watchers, deadline_s, outbox, redis_url))
    # Plain data across the process boundary: the dataclasses live in __main__ here and there.
    outbox.put(("result", name, asdict(report)))


# --- the server side ---------------------------------------------------------------------------


def status_env(redis_url: str, port: int) -> dict[str, str]:
    # Unknown DARKROOM_* variables stop a service at start-up, so start from a clean slate.
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DARKROOM_", "REDIS_", "AWS_", "S3_"))
    }
    env.update(
        {
            "REDIS_URL": redis_url,
            "DARKROOM_KEY_PREFIX": KEY_PREFIX,
            "DARKROOM_HOST": "127.0.0.1",
            "DARKROOM_AUTH": "off",
            "DARKROOM_PORT": str(port),
            "DARKROOM_LOG_FORMAT": "json",
            "PYTHONPATH": str(REPO_ROOT),
        }
    )
    return env


def start_status(workdir: Path, redis_url: str, port: int) -> subprocess.Popen[bytes]:
    log = (workdir / "status.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "common.cli", "status"],
        cwd=workdir,  # no stray .env from the checkout
        env=status_env(redis_url, port),
        stdout=log,
        stderr=subprocess.STDOUT,
        preexec_fn=raise_fd_limit,
    )
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1) as response:
                if response.status == 200:
                    return process
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"status did not start:\n{(workdir / 'status.log').read_text()}")
        time.sleep(0.1)


async def redis_commands(redis: Any) -> int:
    stats = await redis.info("stats")
    return int(stats["total_commands_processed"])


async def new_job(jobs: JobStore) -> str:
    job_id = str(uuid.uuid4())
    params = RenderParams(
        prompt="bench", width=512, height=512, num_inference_steps=50, guidance_scale=7.5, seed=1
    )
    spec = JobSpec(job_id=job_id, model="sd", task=Task.T2I, params=params, created_at=utcnow())
    await jobs.submit(spec, message="queued")
    await jobs.emit(job_id, status=JobStatus.PROCESSING, progress=0, message="rendering")
    return job_id


async def drive_job(
    jobs: JobStore,
    job_id: str,
    start: float,
    offset_s: float,
    interval_s: float,
    count: int,
    emit_ms: list[float] | None = None,
) -> None:
    """``count`` progress events at a steady rate, the first at ``start + offset_s``."""
    for step in range(count):
        delay_s = start + offset_s + step * interval_s - time.monotonic()
        if delay_s > 0:
            await asyncio.sleep(delay_s)
        called = time.monotonic()
        await jobs.emit(job_id, progress=min(99, step), message=f"step {step + 1}/{count}")
        if emit_ms is not None:
            emit_ms.append((time.monotonic() - called) * 1000)


async def finish_job(jobs: JobStore, job_id: str, at: float) -> int:
    """The terminal event, at monotonic time ``at``; its seq."""
    await asyncio.sleep(max(0.0, at - time.monotonic()))
    last = await jobs.emit(job_id, status=JobStatus.COMPLETED, progress=100, result_urls=["x"])
    assert last is not None
    return last.seq


def _same(client: FeedClient) -> FeedClient:
    """A protocol factory's body: the client made beforehand."""
    return client


async def warm_up(port: int, jobs: JobStore) -> None:
    """A few feeds through every code path, so the idle reading is not a cold process."""
    loop = asyncio.get_running_loop()
    job_id = await new_job(jobs)
    feeds = []
    for index in range(4):
        result, snapshot, done = FeedResult(job_id), loop.create_future(), loop.create_future()
        client = FeedClient(
            feed_request(port, PATHS[index % 2].format(job_id)),
            result,
            array("d"),
            array("d"),
            snapshot,
            done,
        )
        await loop.create_connection(functools.partial(_same, client), "127.0.0.1", port)
        await asyncio.wait_for(snapshot, READY_TIMEOUT_S)
        feeds.append(done)
    await drive_job(jobs, job_id, time.monotonic(), 0, 0.01, 5)
    await finish_job(jobs, job_id, 0)
    await asyncio.wait_for(asyncio.gather(*feeds), READY_TIMEOUT_S)


class Inbox:
    """Messages from the client processes by kind: a process whose feeds all end early (cut by
    the server) may send its result before a slower one is ready."""

    def __init__(self, messages: Any) -> None:
        self.messages = messages
        self.got: dict[str, dict[str, Any]] = {"ready": {}, "result": {}}

    async def wait(self, kind: str, names: Iterable[str], timeout_s: float) -> dict[str, Any]:
        loop, deadline = asyncio.get_running_loop(), time.monotonic() + timeout_s
        while missing := set(names) - set(self.got[kind]):
            try:
                got, name, payload = await loop.run_in_executor(
                    None, self.messages.get, True, max(0.1, deadline - time.monotonic())
                )
            except queue.Empty:
                raise TimeoutError(f"no {kind} from {sorted(missing)}") from None
            self.got[got][name] = payload
        return self.got[kind]


@dataclass
class Sampler:
    pid: int
    peak_rss_mb: float = 0.0
    samples: list[tuple[float, float]] = field(default_factory=list)

    async def run(self, started: float) -> None:
        while True:
            rss = rss_mb(self.pid)
            self.peak_rss_mb = max(self.peak_rss_mb, rss)
            self.samples.append((round(time.monotonic() - started, 2), round(rss, 1)))
            await asyncio.sleep(SAMPLE_EVERY_S)


def percentile(ordered: list[float], q: float) -> float:
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def latency_summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "count": len(ordered),
        "p50_ms": round(percentile(ordered, 0.50), 2),
        "p90_ms": round(percentile(ordered, 0.90), 2),
        "p99_ms": round(percentile(ordered, 0.99), 2),
        "p999_ms": round(percentile(ordered, 0.999), 2),
        "max_ms": round(ordered[-1], 2) if ordered else float("nan"),
    }


def machine() -> dict[str, Any]:
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": model,
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


async def bench(args: argparse.Namespace, watchers_n: int, workdir: Path) -> dict[str, Any]:
    from redis.asyncio import Redis

    redis_server = RedisServer(workdir / "redis")
    redis_server.start()
    assert redis_server.process is not None
    port = free_port()
    status = start_status(workdir, redis_server.url, port)
    redis = Redis.from_url(redis_server.url, decode_responses=True)
    jobs = JobStore(redis, Keys(KEY_PREFIX), task_ttl_s=600)
    procs: list[Any] = []
    try:
        rss_start_mb = rss_mb(status.pid)
        await warm_up(port, jobs)
        await asyncio.sleep(1)
        rss_idle_mb = rss_mb(status.pid)

        job_ids = [await new_job(jobs) for _ in range(args.jobs)]
        watchers = [
            (job_ids[i % args.jobs], PATHS[i % 2].format(job_ids[i % args.jobs]))
            for i in range(watchers_n)
        ]
        probes, bulk = watchers[: args.probes], watchers[args.probes :]
        groups = {f"clients-{n}": bulk[n :: args.client_procs] for n in range(args.client_procs)}
        if probes:
            groups["probe"] = probes
        ctx = mp.get_context("spawn")
        messages = ctx.Queue()
        deadline_s = 2 * READY_TIMEOUT_S + args.duration_s
        for name, group in groups.items():
            redis_url = redis_server.url if name == "probe" else None
            args_ = (name, port, group, deadline_s, messages, redis_url)
            proc = ctx.Process(target=client_process, args=args_)
            proc.start()
            procs.append(proc)

        inbox = Inbox(messages)
        connect_started = time.monotonic()
        connected = sum((await inbox.wait("ready", groups, 2 * READY_TIMEOUT_S)).values())
        connect_s = time.monotonic() - connect_started
        # Watchers of jobs that say nothing: longer than the feeds' resync period, so what
        # quiet feeds cost (CPU, Redis commands) shows.
        idle_cpu0, idle_cmds0 = cpu_s(status.pid), await redis_commands(redis)
        await asyncio.sleep(args.idle_s)
        idle = {
            "seconds": args.idle_s,
            "server_cpu_pct": round(100 * (cpu_s(status.pid) - idle_cpu0) / args.idle_s, 1),
            "redis_commands_per_s": round(
                (await redis_commands(redis) - idle_cmds0 - 1) / args.idle_s
            ),
        }
        rss_connected_mb = rss_mb(status.pid)

        count = max(1, round(args.duration_s * 1000 / args.interval_ms))
        interval_s = args.interval_ms / 1000
        started = time.monotonic()
        sampler = Sampler(status.pid)
        sampling = asyncio.create_task(sampler.run(started))
        cpu0 = {"server": cpu_s(status.pid), "redis": cpu_s(redis_server.process.pid)}
        cpu0["emitter"] = self_cpu_s()
        busy0 = machine_busy_s()
        emit_ms: list[float] = []
        offsets_s = [i * interval_s / args.jobs for i in range(args.jobs)]
        await asyncio.gather(
            *(
                drive_job(jobs, job_id, started, offset_s, interval_s, count, emit_ms)
                for job_id, offset_s in zip(job_ids, offsets_s, strict=True)
            )
        )
        emit_s = time.monotonic() - started
        cpu1 = {"server": cpu_s(status.pid), "redis": cpu_s(redis_server.process.pid)}
        cpu1["emitter"] = self_cpu_s()
        busy_s = machine_busy_s() - busy0

        # Every job ends within one interval, so all feeds close together: a worst case kept
        # apart from the steady state above.
        closing, close_cpu0 = time.monotonic(), cpu_s(status.pid)
        final_seqs = await asyncio.gather(
            *(
                finish_job(jobs, job_id, closing + offset_s)
                for job_id, offset_s in zip(job_ids, offsets_s, strict=True)
            )
        )
        reports: list[ClientReport] = []
        for raw in (await inbox.wait("result", groups, deadline_s)).values():
            raw["feeds"] = [FeedResult(**feed) for feed in raw["feeds"]]
            reports.append(ClientReport(**raw))
        close_cpu_s = cpu_s(status.pid) - close_cpu0
        drained_s = time.monotonic() - started
        sampling.cancel()
        await asyncio.sleep(1)
        rss_after_mb = rss_mb(status.pid)
        rss_hwm_mb = rss_mb(status.pid, "VmHWM")
    finally:
        for proc in procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
        await redis.aclose()
        status.send_signal(signal.SIGTERM)
        try:
            status.wait(timeout=30)
        except subprocess.TimeoutExpired:
            status.kill()
        redis_server.stop(kill=True)

    log_text = (workdir / "status.log").read_text(errors="replace")
    server_errors = {
        name: log_text.count(f'"{name}"')
        for name in ("http.unhandled_error", "http.redis_unavailable")
    }
    final_seq = dict(zip(job_ids, final_seqs, strict=True))
    bulk_latencies: list[float] = []
    probe_latencies: list[float] = []
    pubsub_latencies: list[float] = []
    pairs: list[tuple[float, float]] = []
    feeds: list[FeedResult] = []
    for report in reports:
        latencies = array("d")
        latencies.frombytes(report.latencies_ms)
        (probe_latencies if report.name == "probe" else bulk_latencies).extend(latencies)
        pubsub = array("d")
        pubsub.frombytes(report.pubsub_ms)
        pubsub_latencies.extend(pubsub)
        emitted = array("d")
        emitted.frombytes(report.emitted_at)
        pairs.extend(zip(emitted, latencies, strict=True))
        feeds.extend(report.feeds)
    expected = sum(final_seq[f.job_id] - f.snapshot_seq for f in feeds if f.snapshot_seq >= 0)
    delivered = sum(f.events for f in feeds)
    everything = bulk_latencies + probe_latencies
    terminal_latencies = [f.terminal_ms for f in feeds if f.terminal_ms >= 0]

    # p99 over time: a server that cannot keep up shows a rising line, a pause a spike.
    t0 = min((at for at, _ in pairs), default=0.0)
    window_s = max(1, round(args.duration_s / 20))
    by_window: dict[int, list[float]] = {}
    for at, latency in pairs:
        by_window.setdefault(int((at - t0) // window_s) * window_s, []).append(latency)
    p99_by_window = {s: round(percentile(sorted(v), 0.99), 1) for s, v in sorted(by_window.items())}

    cpu_pct = {k: round(100 * (cpu1[k] - cpu0[k]) / emit_s, 1) for k in cpu0}
    clients_cpu_s = sum(r.cpu_events_s for r in reports)
    cpu_pct["clients"] = round(100 * clients_cpu_s / drained_s, 1)
    # Whatever else ran on the machine meanwhile: other load starves the server and shows up
    # as latency that no profile of the server explains.
    ours = sum(cpu1[k] - cpu0[k] for k in cpu0) + clients_cpu_s * emit_s / drained_s
    cpu_pct["other_processes"] = round(max(0.0, 100 * (busy_s - ours) / emit_s), 1)
    per_conn_kb = (rss_connected_mb - rss_idle_mb) * 1024 / max(1, connected)
    overall = latency_summary(everything)
    return {
        "params": {
            "watchers": watchers_n,
            "jobs": args.jobs,
            "watchers_per_job": round(watchers_n / args.jobs, 1),
            "interval_ms": args.interval_ms,
            "duration_s": args.duration_s,
            "events_per_job": count + 1,
            "deliveries_per_s": round(watchers_n * 1000 / args.interval_ms),
            "client_procs": args.client_procs,
            "probes": args.probes,
            "status_settings": {
                "sse_ping_s": GatewaySettings.model_fields["sse_ping_s"].default,
                "sse_resync_s": GatewaySettings.model_fields["sse_resync_s"].default,
                "log_level": "INFO",
            },
        },
        # From the client processes' start (imports included) to every snapshot in; and the
        # slowest process's own connect phase.
        "connect": {
            "connected": connected,
            "seconds": round(connect_s, 2),
            "client_connect_s": round(max((r.connect_s for r in reports), default=0), 2),
        },
        "idle_watchers": idle,
        "latency": overall,
        "latency_ms": {k: overall[f"{k}_ms"] for k in ("p50", "p99", "max")},  # for bench/plot.py
        "latency_bulk_clients": latency_summary(bulk_latencies),
        "latency_probe": latency_summary(probe_latencies),
        "latency_pubsub_baseline": latency_summary(pubsub_latencies),
        "emit_call": latency_summary(emit_ms),
        "p99_ms_by_window": {"window_s": window_s, "p99_ms": p99_by_window},
        "events": {
            "expected": expected,
            "delivered": delivered,
            "lost": expected - delivered,
            "out_of_order": sum(f.out_of_order for f in feeds),
            "feeds": len(feeds),
            "feeds_with_snapshot": sum(1 for f in feeds if f.snapshot_seq >= 0),
            "feeds_terminal": sum(1 for f in feeds if f.terminal),
            "feeds_closed_by_server": sum(1 for f in feeds if f.closed_by_server),
            "feeds_cut": sum(1 for f in feeds if f.snapshot_seq >= 0 and not f.terminal),
            "client_errors": sorted({f.error for f in feeds if f.error})[:5],
            "server_errors": server_errors,
            "emit_seconds": round(emit_s, 2),
            "drain_seconds": round(drained_s, 2),
        },
        "rss_mb": {
            "start": round(rss_start_mb, 1),
            "idle": round(rss_idle_mb, 1),
            "connected": round(rss_connected_mb, 1),
            "peak": round(max(sampler.peak_rss_mb, rss_connected_mb), 1),
            "high_water": round(rss_hwm_mb, 1),
            "after": round(rss_after_mb, 1),
        },
        "per_connection_kb": round(per_conn_kb, 1),
        "cpu_pct_of_one_core": cpu_pct,
        # The server's CPU per event written to one client: what decides how many watchers one
        # process can feed, whatever else the machine is doing.
        "server_cpu_us_per_delivery": round(
            1e6 * (cpu1["server"] - cpu0["server"]) / max(1, len(everything)), 1
        ),
        # All feeds closing within one interval: their terminal events' latency, and the
        # server's CPU per feed for that event and the teardown.
        "latency_terminal": latency_summary(terminal_latencies),
        "server_cpu_us_per_feed_close": round(1e6 * close_cpu_s / max(1, len(feeds)), 1),
        "client_loop": reports[0].loop if reports else "",
        "goals": {
            "watchers": GOAL_WATCHERS,
            "p99_ms": GOAL_P99_MS,
            "rss_mb": GOAL_RSS_MB,
            "p99_met": overall["p99_ms"] <= GOAL_P99_MS,
            "rss_met": max(sampler.peak_rss_mb, rss_hwm_mb) <= GOAL_RSS_MB,
            "none_lost": expected == delivered and not any(f.out_of_order for f in feeds),
        },
        "rss_samples": sampler.samples[:: max(1, len(sampler.samples) // 40)],
    }


def verdict(met: bool) -> str:
    return "met" if met else "MISSED"


def print_table(result: dict[str, Any], m: dict[str, Any]) -> None:
    p, lat, ev, rss = result["params"], result["latency"], result["events"], result["rss_mb"]
    probe, cpu, goals = result["latency_probe"], result["cpu_pct_of_one_core"], result["goals"]
    pubsub, term = result["latency_pubsub_baseline"], result["latency_terminal"]
    rows = [
        ("watchers / jobs", f"{p['watchers']} / {p['jobs']} ({p['watchers_per_job']} per job)"),
        (
            "event rate",
            f"1 per job every {p['interval_ms']} ms = {p['deliveries_per_s']} "
            f"deliveries/s for {p['duration_s']} s",
        ),
        (
            "connected",
            f"{result['connect']['connected']} in {result['connect']['client_connect_s']} s",
        ),
        (
            "progress latency p50/p99/max",
            f"{lat['p50_ms']} / {lat['p99_ms']} / {lat['max_ms']} ms"
            f"  (goal p99 <= {GOAL_P99_MS:g} ms: {verdict(goals['p99_met'])})",
        ),
        (
            "  probe feeds p50 / p99",
            f"{probe['p50_ms']} / {probe['p99_ms']} ms "
            f"({p['probes']} feeds on an idle client loop)",
        ),
        (
            "  bare PSUBSCRIBE p50 / p99",
            f"{pubsub['p50_ms']} / {pubsub['p99_ms']} ms (Redis and emitter only; emit call "
            f"p99 {result['emit_call']['p99_ms']} ms)",
        ),
        (
            "events delivered / expected",
            f"{ev['delivered']} / {ev['expected']}, lost "
            f"{ev['lost']}, out of order {ev['out_of_order']}",
        ),
        (
            "feeds closed by server",
            f"{ev['feeds_closed_by_server']} / {ev['feeds']} "
            f"(terminal seen {ev['feeds_terminal']}, cut {ev['feeds_cut']})",
        ),
        (
            "quiet watchers",
            f"server {result['idle_watchers']['server_cpu_pct']}% CPU, Redis "
            f"{result['idle_watchers']['redis_commands_per_s']} commands/s "
            f"over {result['idle_watchers']['seconds']:g} s before any event",
        ),
        ("status RSS idle / connected", f"{rss['idle']} / {rss['connected']} MB"),
        (
            "status RSS peak",
            f"{rss['peak']} MB (high water {rss['high_water']}, after "
            f"{rss['after']}; goal <= {GOAL_RSS_MB:g} MB: {verdict(goals['rss_met'])})",
        ),
        ("per connection", f"{result['per_connection_kb']} KB"),
        ("CPU, % of one core", ", ".join(f"{k} {v}" for k, v in cpu.items())),
        ("server CPU per delivery", f"{result['server_cpu_us_per_delivery']} µs"),
        (
            "all feeds closing at once",
            f"terminal event p50 / p99 {term['p50_ms']} / {term['p99_ms']} ms, server CPU "
            f"{result['server_cpu_us_per_feed_close']} µs per feed",
        ),
        (
            f"p99 per {result['p99_ms_by_window']['window_s']} s (ms)",
            " ".join(str(v) for v in result["p99_ms_by_window"]["p99_ms"].values()),
        ),
    ]
    width = max(len(name) for name, _ in rows)
    print(f"\nSSE fan-out, one status process — {m['cpu_count']} CPUs, {m['cpu_model']}")
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")
    if cpu["other_processes"] > OTHER_LOAD_WARN_PCT:
        print(
            f"  WARNING: other processes used {cpu['other_processes']}% of a core during the "
            "run; the figures are not the server's alone"
        )
    if ev["client_errors"] or any(ev["server_errors"].values()):
        print(f"  errors: clients {ev['client_errors']}, server log {ev['server_errors']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--watchers",
        type=lambda text: [int(n) for n in text.split(",")],
        default=[GOAL_WATCHERS],
        help="one run per comma-separated count",
    )
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--interval-ms", type=float, default=250)
    parser.add_argument("--duration-s", type=float, default=60)
    parser.add_argument("--client-procs", type=int, default=2)
    parser.add_argument(
        "--idle-s", type=float, default=6, help="connected, before any event (resync is 5 s)"
    )
    parser.add_argument("--probes", type=int, default=10, help="feeds on their own client loop")
    parser.add_argument("--out", type=Path, default=RESULTS_FILE)
    parser.add_argument(
        "--quiet-wait-s",
        type=float,
        default=120,
        help="first wait up to this long for other processes to leave the CPUs alone",
    )
    parser.add_argument("--workdir", type=Path, help="keep Redis data and status.log here")
    args = parser.parse_args()
    raise_fd_limit()
    about = machine()
    runs = []
    for watchers_n in args.watchers:
        if args.quiet_wait_s > 0:
            load_pct = wait_until_quiet(args.quiet_wait_s)
            print(f"machine load before the run: {load_pct:.0f}% of one core")
        if args.workdir is not None:
            workdir = args.workdir / str(watchers_n)
            workdir.mkdir(parents=True, exist_ok=True)
            run = asyncio.run(bench(args, watchers_n, workdir))
        else:
            with tempfile.TemporaryDirectory(prefix="darkroom-bench-") as tmp:
                run = asyncio.run(bench(args, watchers_n, Path(tmp)))
        print_table(run, about)
        runs.append(run)
    result = {
        "benchmark": "sse_fanout",
        "command": "uv run python -m bench.sse_fanout " + " ".join(sys.argv[1:]),
        "machine": about,
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
