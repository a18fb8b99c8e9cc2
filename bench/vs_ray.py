"""Darkroom against Ray Serve on the same box, the same checkpoint and the same closed-loop client.

- raw: the pipeline alone in this process, batch 1 and batch 8 (no PNG), at the start of every
  run: the limit (the median over the runs);
- Darkroom: ``darkroom up`` as its users run it (embedded Redis with AOF, notifier, scheduler,
  auth with an API key, local storage), every job submitted on ``POST /api/sd/t2i`` with
  ``cache: false`` and followed over its SSE feed to ``completed``; once more at 16 clients
  polling ``GET /api/{id}/status`` every 20 ms instead (800 reads a second when all wait);
- Ray Serve: ``bench.ray_serve_app``, one replica with ``@serve.batch(max_batch_size=8,
  batch_wait_timeout_s=0.005)`` answering each POST with the saved PNG's URL.

Each load is C clients in a closed loop (each sends its next job when its last one ends) for a
warm-up, then a measured window: jobs/s = jobs ended in the window / its length; e2e = submit to
the end as the client saw it. Over each window the CPU time of every process of the system under
test (``/proc`` through psutil) and of the client itself is read, per job; for Darkroom also
Redis's commands per job (``INFO commandstats``). Runs alternate which system goes first; the
report gives the median over the runs.

    uv run --group ray python -m bench.vs_ray                       # 3 runs, ~20 min
    uv run --group ray python -m bench.vs_ray --runs 1 --measure-s 8 --clients 8 --out /tmp/x.json
    uv run --group ray python -m bench.vs_ray --profile             # + py-spy of each service

Writes bench/results/vs_ray.json (every run, and the medians).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import psutil
import torch

from bench.stack_overhead import RawLoop, percentile, worker_metrics
from common.catalog import demo_catalog
from common.local import default_torch_threads, missing_checkpoints
from common.redis_server import free_port
from tests.support.waiting import wait_for

RESULTS = Path(__file__).parent / "results" / "vs_ray.json"
# The load: the demo `sd` checkpoint at its smallest size, seeded, never cached.
PARAMS: dict[str, Any] = {
    "width": 64,
    "height": 64,
    "num_inference_steps": 4,
    "guidance_scale": 7.5,
}
POLL_INTERVAL_S = 0.02
START_TIMEOUT_S = 300.0
ROOT = Path(__file__).resolve().parent.parent


# --- the client -----------------------------------------------------------------------------


@dataclass
class Window:
    """What the clients saw over one measured window."""

    began: float = 0.0
    ended: float = 0.0
    latencies_s: list[float] = field(default_factory=list)

    @property
    def length_s(self) -> float:
        return self.ended - self.began


Job = Callable[[int], Awaitable[None]]


async def closed_loop(job: Job, clients: int, warmup_s: float, measure_s: float) -> Window:
    """``clients`` loops, each sending its next job as soon as its last one ends. Jobs that end
    inside the window count; after it every client finishes the job in hand and stops."""
    window = Window()
    stopping = False
    counter = iter(range(10**9))

    async def client() -> None:
        while not stopping:
            began = time.perf_counter()
            await job(next(counter))
            ended = time.perf_counter()
            if window.began <= began and ended <= window.ended:
                window.latencies_s.append(ended - began)

    start = time.perf_counter()
    window.began, window.ended = start + warmup_s, start + warmup_s + measure_s
    tasks = [asyncio.create_task(client()) for _ in range(clients)]
    await asyncio.sleep(warmup_s + measure_s)
    stopping = True
    await asyncio.gather(*tasks)
    return window


def http_client(base_url: str, headers: dict[str, str] | None = None) -> aiohttp.ClientSession:
    """The load generator's client. aiohttp, for both systems: its C parser costs about a tenth
    of httpx's CPU per request here (0.25 ms against 2.6 ms), and a client that takes a core of
    the two would measure itself."""
    return aiohttp.ClientSession(
        base_url,
        headers=headers,
        timeout=aiohttp.ClientTimeout(total=120),
        connector=aiohttp.TCPConnector(limit=0),
    )


def body(i: int) -> dict[str, Any]:
    return {"prompt": f"a lighthouse at dusk, study {i}", "seed": i, **PARAMS}


async def sse_messages(response: aiohttp.ClientResponse) -> AsyncIterator[tuple[str, str]]:
    """(event, data) of each event on an SSE stream, as an EventSource dispatches them."""
    event, data = "message", list[str]()
    async for raw in response.content:
        line = raw.decode().rstrip("\r\n")
        if not line:
            if data:
                yield event, "\n".join(data)
            event, data = "message", list[str]()
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
        elif line.startswith("event:"):
            event = line[6:].strip()


def darkroom_sse(client: aiohttp.ClientSession) -> Job:
    async def job(i: int) -> None:
        async with client.post("/api/sd/t2i", json={**body(i), "cache": False}) as answer:
            answer.raise_for_status()
            session = (await answer.json())["session_id"]
        last: dict[str, Any] = {}
        async with client.get(f"/api/{session}/events") as feed:
            feed.raise_for_status()
            async for event, data in sse_messages(feed):
                if event == "message":  # not the queue-position frames
                    last = json.loads(data)
        if last.get("status") != "completed":
            raise RuntimeError(f"job {session} ended {last}")

    return job


def darkroom_poll(client: aiohttp.ClientSession) -> Job:
    async def job(i: int) -> None:
        async with client.post("/api/sd/t2i", json={**body(i), "cache": False}) as answer:
            answer.raise_for_status()
            session = (await answer.json())["session_id"]
        while True:
            await asyncio.sleep(POLL_INTERVAL_S)
            async with client.get(f"/api/{session}/status") as read:
                read.raise_for_status()
                state = await read.json()
            if state["status"] in ("completed", "failed", "canceled"):
                break
        if state["status"] != "completed":
            raise RuntimeError(f"job {session} ended {state}")

    return job


def ray_post(client: aiohttp.ClientSession) -> Job:
    async def job(i: int) -> None:
        async with client.post("/generate", json=body(i)) as answer:
            answer.raise_for_status()
            url = (await answer.json())["url"]
        if not url.endswith(".png"):
            raise RuntimeError(f"unexpected answer {url}")

    return job


# --- CPU accounting -------------------------------------------------------------------------


def label(process: psutil.Process) -> str:
    """A process's role: the Darkroom service it runs, or Ray's name for it."""
    try:
        cmdline = process.cmdline()
        name = process.name()
    except psutil.Error:
        return "gone"
    if "common.cli" in cmdline:
        return cmdline[cmdline.index("common.cli") + 1]
    if name.startswith("redis-server"):
        return "redis"
    if name.startswith("ray::"):
        return name.removeprefix("ray::").split(":", 1)[0]
    if "bench.ray_serve_app" in cmdline:
        return "ray driver"
    for part in cmdline[:3]:
        base = os.path.basename(part)
        if base in ("raylet", "gcs_server") or base.endswith(".py"):
            return base.removesuffix(".py")
    return name


def cpu_seconds(root_pid: int) -> dict[int, tuple[str, float]]:
    """Every process in the tree under ``root_pid``: its role and CPU seconds so far."""
    out: dict[int, tuple[str, float]] = {}
    try:
        root = psutil.Process(root_pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.Error:
        return out
    for process in processes:
        try:
            times = process.cpu_times()
            out[process.pid] = (label(process), times.user + times.system)
        except psutil.Error:
            continue
    return out


def cpu_per_job_ms(
    before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]], jobs: int
) -> dict[str, float]:
    by_role: dict[str, float] = {}
    for pid, (role, seconds) in after.items():
        by_role[role] = by_role.get(role, 0.0) + seconds - before.get(pid, (role, 0.0))[1]
    return {
        role: round(seconds * 1000 / max(1, jobs), 3)
        for role, seconds in sorted(by_role.items(), key=lambda kv: -kv[1])
    }


def own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def redis_commands(redis_url: str) -> int:
    from redis.asyncio import Redis

    redis = Redis.from_url(redis_url)
    try:
        stats = await redis.info("commandstats")
    finally:
        await redis.aclose()
    return sum(int(value["calls"]) for value in stats.values())


# --- the systems under test -----------------------------------------------------------------


@dataclass
class System:
    name: str
    pid: int
    base_url: str
    headers: dict[str, str]
    redis_url: str | None = None
    worker_metrics: str | None = None


def models_cache(path: Path) -> Path:
    """The demo checkpoints ``darkroom up`` writes, made once and shared by every run."""
    if missing_checkpoints(demo_catalog(path)):
        subprocess.run(
            [sys.executable, "-m", "common.cli", "models", "make-tiny", str(path)], check=True
        )
    return path


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code < 500
    except httpx.HTTPError:
        return False


@contextmanager
def darkroom(root: Path, models: Path, torch_threads: int) -> Iterator[System]:
    """``darkroom up`` in a fresh directory (its demo checkpoints linked from the cache), auth on
    with one API key without limits."""
    root.mkdir(parents=True)
    (root / ".darkroom").mkdir()
    (root / ".darkroom" / "models").symlink_to(models)
    port = free_port()
    probe_port = free_port()
    env = {
        **os.environ,
        "DARKROOM_PORT": str(port),
        "DARKROOM_HEALTH_PORT": str(probe_port),
        "DARKROOM_AUTH": "keys",
        "DARKROOM_TORCH_THREADS": str(torch_threads),
    }
    env.pop("DARKROOM_MODELS_FILE", None)
    log = (root / "darkroom.log").open("wb")
    up = subprocess.Popen(
        [sys.executable, "-m", "common.cli", "up"],
        cwd=root,
        env={**env, "PYTHONPATH": str(ROOT)},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: _answers(base + "/"), timeout_s=START_TIMEOUT_S, what="the gateway")
        created = subprocess.run(
            [sys.executable, "-m", "common.cli", "keys", "create", "--name", "bench"]
            + ["--rate-per-min", "none", "--max-queued", "none", "--max-cost", "none"],
            cwd=root,
            env={**env, "PYTHONPATH": str(ROOT)},
            check=True,
            capture_output=True,
            text=True,
        )
        key = created.stdout.strip().splitlines()[-1]
        redis_url = (root / ".darkroom" / "redis.url").read_text().strip()
        system = System(
            "darkroom",
            up.pid,
            base,
            {"Authorization": f"Bearer {key}"},
            redis_url,
            worker_metrics=f"http://127.0.0.1:{probe_port}/metrics",
        )
        # Ready when a job renders: the worker has loaded and warmed every route.
        asyncio.run(_first_job(system, darkroom_sse))
        yield system
    finally:
        _stop(up)
        log.close()


@contextmanager
def ray_serve(root: Path, models: Path, torch_threads: int) -> Iterator[System]:
    root.mkdir(parents=True)
    port = free_port()
    models_file = root / "models.toml"
    from common.catalog import write_catalog

    write_catalog(demo_catalog(models), models_file)
    log = (root / "ray.log").open("wb")
    app = subprocess.Popen(
        [sys.executable, "-m", "bench.ray_serve_app", str(models_file), str(root / "out")]
        + [str(port), "--torch-threads", str(torch_threads)],
        cwd=ROOT,
        # Under `uv run` Ray would ship this tree and its virtualenv to its workers as a runtime
        # environment; they run from the same interpreter and tree here anyway.
        env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"},
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
    )
    try:
        assert app.stdout is not None
        line = app.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"Ray Serve did not start: {line!r}; see {root / 'ray.log'}")
        system = System("ray", app.pid, f"http://127.0.0.1:{port}", {})
        asyncio.run(_first_job(system, ray_post))
        yield system
    finally:
        _stop(app)
        log.close()
        # Ray leaves its session files behind; its processes go with the driver.
        subprocess.run(["pkill", "-f", "ray::"], check=False)


def _stop(process: subprocess.Popen[Any]) -> None:
    """SIGTERM, then SIGKILL if it has not exited within a minute."""
    process.terminate()
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()


async def _first_job(system: System, make: Callable[[aiohttp.ClientSession], Job]) -> None:
    async with http_client(system.base_url, system.headers) as client:
        for i in range(3):
            await make(client)(10**6 + i)


# --- one load on one system -----------------------------------------------------------------


async def measure_load(
    system: System,
    make: Callable[[aiohttp.ClientSession], Job],
    clients: int,
    warmup_s: float,
    measure_s: float,
) -> dict[str, Any]:
    async with http_client(system.base_url, system.headers) as client:
        job = make(client)
        sampled: dict[str, Any] = {}

        async def sample(suffix: str) -> None:
            sampled["cpu" + suffix] = cpu_seconds(system.pid)
            sampled["own" + suffix] = own_cpu_s()
            if system.redis_url:
                sampled["commands" + suffix] = await redis_commands(system.redis_url)
            if system.worker_metrics:
                sampled["worker" + suffix] = await asyncio.to_thread(
                    worker_metrics, system.worker_metrics
                )

        async def sample_at_edges() -> None:
            await asyncio.sleep(warmup_s)
            await sample("")
            await asyncio.sleep(measure_s)
            await sample("_end")

        sampling = asyncio.create_task(sample_at_edges())
        window = await closed_loop(job, clients, warmup_s, measure_s)
        await sampling
    jobs = len(window.latencies_s)
    out: dict[str, Any] = {
        "clients": clients,
        "jobs": jobs,
        "jobs_per_s": round(jobs / window.length_s, 2),
        "e2e_p50_ms": round(percentile(window.latencies_s, 50) * 1000, 1),
        "e2e_p99_ms": round(percentile(window.latencies_s, 99) * 1000, 1),
        "client_cpu_ms_per_job": round(
            (sampled["own_end"] - sampled["own"]) * 1000 / max(1, jobs), 3
        ),
        "cpu_ms_per_job": cpu_per_job_ms(sampled["cpu"], sampled["cpu_end"], jobs),
    }
    out["system_cpu_ms_per_job"] = round(sum(out["cpu_ms_per_job"].values()), 3)
    if system.redis_url:
        # The two INFO calls themselves are in the count; over hundreds of jobs they vanish.
        commands = sampled["commands_end"] - sampled["commands"]
        out["redis_commands_per_job"] = round(commands / max(1, jobs), 1)
    if system.worker_metrics:
        # The worker's pipeline calls in the window (from its /metrics): how full its batches
        # were, how busy the device was, and how long a call took beside everything else.
        began, ended = sampled["worker"], sampled["worker_end"]
        calls = max(1.0, ended["calls"] - began["calls"])
        busy_s = ended["busy_s"] - began["busy_s"]
        out["worker"] = {
            "mean_batch": round((ended["jobs"] - began["jobs"]) / calls, 2),
            "duty_cycle": round(busy_s / measure_s, 3),
            "call_ms": round(busy_s / calls * 1000, 1),
        }
    return out


def run_loads(
    system: System,
    make: Callable[[aiohttp.ClientSession], Job],
    clients: list[int],
    args: argparse.Namespace,
) -> dict[str, Any]:
    out = {}
    for count in clients:
        result = asyncio.run(measure_load(system, make, count, args.warmup_s, args.measure_s))
        print(f"  {system.name} C={count}: {json.dumps(result)}", flush=True)
        out[str(count)] = result
    return out


def profile(system: System, args: argparse.Namespace, out_dir: Path) -> dict[str, Any]:
    """py-spy on every Python service of Darkroom under the heaviest load: where each one's
    CPU goes, as the share of its samples in each function (own time) and under it (total)."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    out_dir.mkdir(parents=True, exist_ok=True)
    services = {
        role: pid
        for pid, (role, _) in cpu_seconds(system.pid).items()
        if role in ("gateway", "worker", "uploader", "notifier")
    }
    duration_s = int(args.measure_s)
    recorders = {
        role: subprocess.Popen(
            [py_spy, "record", "--pid", str(pid), "--duration", str(duration_s)]
            + ["--rate", "100", "--format", "raw", "--nonblocking", "--threads"]
            + ["--output", str(out_dir / f"{role}.txt")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for role, pid in services.items()
    }
    load = asyncio.run(measure_load(system, darkroom_sse, max(args.clients), 1.0, duration_s + 2.0))
    for recorder in recorders.values():
        recorder.wait(timeout=120)
    return {
        "load": load,
        "services": {role: top_functions(out_dir / f"{role}.txt") for role in services},
    }


def top_functions(collapsed: Path, top: int = 25) -> dict[str, Any]:
    """From py-spy's collapsed stacks: the functions with the most own and total samples."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    if not collapsed.exists():
        return {"samples": 0}
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        count = int(count_text)
        frames = [frame for frame in stack.split(";") if not frame.startswith("thread ")]
        samples += count
        if not frames:
            continue
        own[frames[-1]] += count
        for frame in set(frames):
            total[frame] += count

    def share(counter: Counter[str]) -> list[list[Any]]:
        return [[name, round(n / samples, 4)] for name, n in counter.most_common(top)]

    return {"samples": samples, "own": share(own), "total": share(total)}


# --- the whole comparison -------------------------------------------------------------------


def raw_limits(models: Path, calls: int, torch_threads: int) -> dict[str, Any]:
    from common.catalog import write_catalog

    torch.set_num_threads(torch_threads)
    with tempfile.TemporaryDirectory() as tmp:
        models_file = Path(tmp) / "models.toml"
        write_catalog(demo_catalog(models), models_file)
        raw = RawLoop(models_file, PARAMS)
        out = {}
        for batch in (1, 8):
            cpu_began = time.process_time()
            calls_s = raw.run(batch, calls)
            cpu_s = time.process_time() - cpu_began
            out[str(batch)] = {
                "images_per_s": round(batch / statistics.median(calls_s), 2),
                "call_p50_ms": round(statistics.median(calls_s) * 1000, 2),
                # Includes the one untimed call before the timed ones.
                "cpu_ms_per_image": round(cpu_s * 1000 / (batch * (calls + 1)), 2),
            }
    return out


def median_raw(raws: list[dict[str, Any]]) -> dict[str, Any]:
    """Each batch size's figures, the median over the runs."""
    return {
        batch: {key: statistics.median(raw[batch][key] for raw in raws) for key in raws[0][batch]}
        for batch in raws[0]
    }


def one_run(index: int, models: Path, args: argparse.Namespace, root: Path) -> dict[str, Any]:
    order = [name for name in ("darkroom", "ray") if name in args.systems]
    if index % 2:
        order.reverse()
    # The limit is measured in every run too, alone on the machine just before the systems:
    # the box drifts by several per cent over a quarter of an hour.
    run: dict[str, Any] = {
        "order": order,
        "raw": raw_limits(models, args.raw_calls, args.torch_threads),
    }
    print(f"run {index + 1}: raw {json.dumps(run['raw'])}", flush=True)
    for name in order:
        print(f"run {index + 1}: {name}", flush=True)
        if name == "darkroom":
            with darkroom(root / f"darkroom-{index}", models, args.torch_threads) as system:
                run["darkroom"] = run_loads(system, darkroom_sse, args.clients, args)
                if args.poll_clients:
                    run["darkroom_polling"] = run_loads(
                        system, darkroom_poll, [args.poll_clients], args
                    )
                if args.profile and index == 0:
                    run["profile"] = profile(system, args, args.profile_dir)
        else:
            with ray_serve(root / f"ray-{index}", models, args.torch_threads) as system:
                run["ray"] = run_loads(system, ray_post, args.clients, args)
    return run


def medians(runs: list[dict[str, Any]], clients: list[int], raw: dict[str, Any]) -> dict[str, Any]:
    def median_of(system: str, count: int, key: str) -> float:
        return float(statistics.median(run[system][str(count)][key] for run in runs))

    table = {}
    for count in clients:
        row: dict[str, Any] = {}
        for system in ("darkroom", "ray"):
            row[system] = {
                key: median_of(system, count, key)
                for key in ("jobs_per_s", "e2e_p50_ms", "client_cpu_ms_per_job")
            }
            row[system]["system_cpu_ms_per_job"] = median_of(system, count, "system_cpu_ms_per_job")
        row["darkroom_vs_ray"] = round(
            statistics.median(
                run["darkroom"][str(count)]["jobs_per_s"] / run["ray"][str(count)]["jobs_per_s"]
                for run in runs
            ),
            3,
        )
        table[str(count)] = row
    top = str(max(clients))
    limit = raw["8"]["images_per_s"]
    summary: dict[str, Any] = {"table": table, "raw_batch_8_images_per_s": limit}
    for system in ("darkroom", "ray"):
        # The median's jobs/s over the median's limit, and each run's over its own limit (the
        # box drifts between runs; a run's systems and its limit were measured minutes apart).
        summary[f"{system}_share_of_raw_batch_8"] = round(
            table[top][system]["jobs_per_s"] / limit, 3
        )
        if all("raw" in run for run in runs):
            by_run = [
                round(run[system][top]["jobs_per_s"] / run["raw"]["8"]["images_per_s"], 3)
                for run in runs
            ]
            summary[f"{system}_share_of_raw_batch_8_by_run"] = by_run
            summary[f"{system}_share_of_raw_batch_8_median_of_runs"] = statistics.median(by_run)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--clients", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--poll-clients", type=int, default=16, help="0: no polling run")
    parser.add_argument("--warmup-s", type=float, default=5.0)
    parser.add_argument("--measure-s", type=float, default=20.0)
    parser.add_argument("--raw-calls", type=int, default=30)
    parser.add_argument("--models", type=Path, default=ROOT / ".darkroom" / "models")
    parser.add_argument("--profile", action="store_true", help="py-spy each service (run 1)")
    parser.add_argument("--profile-dir", type=Path, default=Path("/tmp/darkroom-profiles"))
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=default_torch_threads(),
        help="for the raw loop, the Darkroom worker and the Ray replica alike "
        "(default: what darkroom up gives its worker)",
    )
    parser.add_argument("--systems", nargs="+", default=["darkroom", "ray"])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    models = models_cache(args.models.resolve())
    load_at_start = os.getloadavg()
    runs = []
    with tempfile.TemporaryDirectory(prefix="vs-ray-") as tmp:
        for index in range(args.runs):
            runs.append(one_run(index, models, args, Path(tmp)))
    raw = median_raw([run["raw"] for run in runs])
    result = {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "cpu_model": _cpu_model(),
            "platform": platform.platform(),
            "torch": torch.__version__,
            "ray": _version("ray"),
            "load_avg_at_start": [round(x, 2) for x in load_at_start],
            "load_avg_at_end": [round(x, 2) for x in os.getloadavg()],
        },
        "params": {
            "render": PARAMS,
            "clients": args.clients,
            "poll_clients": args.poll_clients,
            "poll_interval_s": POLL_INTERVAL_S,
            "warmup_s": args.warmup_s,
            "measure_s": args.measure_s,
            "runs": args.runs,
            "torch_threads": args.torch_threads,
            # Unset: `darkroom up` pins the render to its own cores; empty: no placement.
            "darkroom_render_cpus": os.environ.get("DARKROOM_RENDER_CPUS"),
        },
        "raw": raw,
        "median": medians(runs, args.clients, raw) if len(args.systems) == 2 else None,
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["median"], indent=2))


def _cpu_model() -> str | None:
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        return None
    for line in cpuinfo.read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return None


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


if __name__ == "__main__":
    main()
