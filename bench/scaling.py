"""Worker scaling: throughput by worker count, what each job costs Redis, and how many jobs one
Redis carries.

    uv run python -m bench.scaling [--jobs 300] [--workers 1,2,3,4]

A private ``redis-server``, a tiny Stable Diffusion checkpoint, and the services as subprocesses
through the ``darkroom`` CLI: one gateway, one uploader and N workers in one consumer group. For
each N the workers are paused (SIGSTOP) while the jobs go in through the HTTP API, then released
together, so the queue is full from the first moment: the time until the last job is stored is
throughput at saturation. Redis's own counters (``INFO commandstats``, ``cpu``, ``stats``) read
before and after give the commands, CPU time and bytes each job costs it; ``redis-benchmark``
then measures what this Redis does per second, and the two give the capacity arithmetic.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis

from common.catalog import demo_catalog, write_catalog
from common.jobs import parse_record
from common.keys import Keys
from common.redis_server import RedisServer, free_port
from tests.support.fleet import submit_jobs
from tests.support.stack import Stack, stack_env

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_FILE = REPO_ROOT / "bench" / "results" / "scaling.json"
KEY_PREFIX = "bench:"
SUBMIT_PATH = "/api/sd/t2i"
# The production default: idle workers poll this often, which is part of what a job costs Redis.
BLOCK_MS = 2000
RUN_TIMEOUT_S = 600.0
POLL_S = 0.05
# Commands this bench sends itself (progress polls, counter reads), not the services.
OWN_COMMANDS = {"info", "xinfo|stream", "xinfo"}
# Progress is published per denoising step, so a job's Redis cost grows with its steps: one run
# with more steps gives the cost of a step, and the capacity is worked out for the seeds' default.
PROFILE_STEPS = 16
DEFAULT_STEPS = 50
# redis-benchmark: requests per case, and the blob size of a real output (a 1024² PNG is ~1.5 MB).
BENCH_REQUESTS = 100_000
BLOB_BYTES = 1_500_000
BLOB_REQUESTS = 2_000
# A script shaped like JobStore's event emit: the record, the event log, the live channel.
EMIT_LIKE_LUA = (
    "local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1) "
    "redis.call('HSET', KEYS[1], 'status', 'processing', 'progress', '50', 'message', ARGV[1]) "
    "redis.call('XADD', KEYS[2], 'MAXLEN', '~', '500', '*', 'event', ARGV[1]) "
    "redis.call('PUBLISH', KEYS[3], ARGV[1]) return seq"
)
# A rough GPU figure for the second "workers to saturate" line: SD-class 512² renders at about
# one image a second per GPU. An assumption for scale, not something measured here.
EXAMPLE_GPU_JOBS_S = 1.0


@dataclass
class RedisCounters:
    """Cumulative server counters at one moment."""

    calls: dict[str, int]
    usec: dict[str, int]
    cpu_s: float
    net_in_bytes: int
    net_out_bytes: int

    @classmethod
    def read(cls, r: redis.Redis) -> RedisCounters:
        info = r.info("all")
        calls, usec = {}, {}
        for key, value in info.items():
            if key.startswith("cmdstat_"):
                name = key.removeprefix("cmdstat_")
                calls[name], usec[name] = int(value["calls"]), int(value["usec"])
        return cls(
            calls=calls,
            usec=usec,
            cpu_s=float(info["used_cpu_sys"]) + float(info["used_cpu_user"]),
            net_in_bytes=int(info["total_net_input_bytes"]),
            net_out_bytes=int(info["total_net_output_bytes"]),
        )


@dataclass
class RedisCost:
    """What a stretch of work cost Redis, per job. Commands count every call the server ran,
    those inside Lua scripts included (``INFO commandstats`` counts both)."""

    commands: float
    scripts: float
    exec_us: float
    cpu_ms: float
    net_in_bytes: float
    net_out_bytes: float
    by_command: dict[str, float] = field(default_factory=dict)

    @classmethod
    def between(cls, before: RedisCounters, after: RedisCounters, jobs: int) -> RedisCost:
        names = (set(after.calls) | set(before.calls)) - OWN_COMMANDS
        calls = {n: after.calls.get(n, 0) - before.calls.get(n, 0) for n in names}
        calls = {n: c for n, c in calls.items() if c > 0}
        usec = sum(after.usec.get(n, 0) - before.usec.get(n, 0) for n in calls)
        return cls(
            commands=sum(calls.values()) / jobs,
            scripts=sum(c for n, c in calls.items() if n.startswith(("eval", "fcall"))) / jobs,
            exec_us=usec / jobs,
            cpu_ms=(after.cpu_s - before.cpu_s) * 1000 / jobs,
            net_in_bytes=(after.net_in_bytes - before.net_in_bytes) / jobs,
            net_out_bytes=(after.net_out_bytes - before.net_out_bytes) / jobs,
            by_command={
                n: round(c / jobs, 2) for n, c in sorted(calls.items(), key=lambda kv: -kv[1])
            },
        )

    def plus(self, other: RedisCost) -> RedisCost:
        by_command = dict(self.by_command)
        for name, per_job in other.by_command.items():
            by_command[name] = round(by_command.get(name, 0) + per_job, 2)
        return RedisCost(
            commands=self.commands + other.commands,
            scripts=self.scripts + other.scripts,
            exec_us=self.exec_us + other.exec_us,
            cpu_ms=self.cpu_ms + other.cpu_ms,
            net_in_bytes=self.net_in_bytes + other.net_in_bytes,
            net_out_bytes=self.net_out_bytes + other.net_out_bytes,
            by_command=dict(sorted(by_command.items(), key=lambda kv: -kv[1])),
        )


@dataclass
class Run:
    workers: int
    torch_threads: int
    jobs: int
    submit_s: float
    rendered_s: float
    completed_s: float
    completed: int
    submit_cost: RedisCost
    process_cost: RedisCost

    @property
    def jobs_s(self) -> float:
        return self.jobs / self.completed_s

    @property
    def rendered_jobs_s(self) -> float:
        return self.jobs / self.rendered_s

    @property
    def cost(self) -> RedisCost:
        return self.submit_cost.plus(self.process_cost)


def finished(r: redis.Redis, keys: Keys, job_ids: list[str]) -> int:
    """How many of the jobs have ended (one pipelined read of their statuses)."""
    with r.pipeline(transaction=False) as pipe:
        for job_id in job_ids:
            pipe.hget(keys.job(job_id), "status")
        statuses = pipe.execute()
    return sum(
        s in (b"completed", b"failed", b"canceled", "completed", "failed", "canceled")
        for s in statuses
    )


def stream_added(r: redis.Redis, stream: str) -> int:
    """Entries ever added to a stream (acked entries are deleted; Redis keeps the count)."""
    try:
        return int(r.xinfo_stream(stream)["entries-added"])
    except redis.ResponseError as exc:  # only XINFO here: every command counts against Redis
        if "no such key" in str(exc):
            return 0
        raise


def wait_until(condition: Any, *, timeout_s: float, what: str) -> float:
    """Poll ``condition`` until true; the monotonic time at which it was seen true."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(POLL_S)
    return time.monotonic()


def signal_all(stack: Stack, sig: signal.Signals) -> None:
    for process in stack.processes.values():
        process.send_signal(sig)


def torch_threads_for(workers: int, fixed: int | None = None) -> int:
    """Split the cores but one (the gateway, uploader and Redis need it) between the workers.
    Oversubscribed torch threads spin-wait against each other: on 2 busy cores one worker with
    2 threads measured 7 to 39 jobs/s, with 1 thread 81."""
    return fixed or max(1, ((os.cpu_count() or 1) - 1) // workers)


def run_once(
    front: Stack,
    workdir: Path,
    r: redis.Redis,
    workers: int,
    jobs: int,
    body: dict[str, Any],
    torch_threads: int | None = None,
) -> Run:
    keys = Keys(KEY_PREFIX)
    threads = torch_threads_for(workers, torch_threads)
    env = {**front.env, "DARKROOM_TORCH_THREADS": str(threads)}
    fleet_dir = workdir / f"workers{workers}-steps{body['num_inference_steps']}"
    fleet_dir.mkdir(exist_ok=True)
    fleet = Stack(name=f"workers{workers}", workdir=fleet_dir, env=env, port=front.port)
    fleet.start(*(f"worker:w{i}" for i in range(workers)))
    try:
        signal_all(fleet, signal.SIGSTOP)
        rendered_before = stream_added(r, keys.rendered)
        before = RedisCounters.read(r)
        began = time.monotonic()
        with httpx.Client(base_url=front.base_url, timeout=60) as client:
            job_ids = submit_jobs(client, SUBMIT_PATH, body, jobs)
        submit_s = time.monotonic() - began
        submitted = RedisCounters.read(r)

        signal_all(fleet, signal.SIGCONT)
        released = time.monotonic()
        rendered_at = wait_until(
            lambda: stream_added(r, keys.rendered) - rendered_before >= jobs,
            timeout_s=RUN_TIMEOUT_S,
            what=f"{jobs} hand-offs",
        )
        done_at = wait_until(
            lambda: finished(r, keys, job_ids) >= jobs,
            timeout_s=RUN_TIMEOUT_S,
            what=f"{jobs} jobs to finish",
        )
        after = RedisCounters.read(r)
    finally:
        signal_all(fleet, signal.SIGCONT)
        fleet.stop_all()
    with r.pipeline(transaction=False) as pipe:
        for job_id in job_ids:
            pipe.hgetall(keys.job(job_id))
        records = [parse_record(raw) for raw in pipe.execute() if raw]
    return Run(
        workers=workers,
        torch_threads=threads,
        jobs=jobs,
        submit_s=submit_s,
        rendered_s=rendered_at - released,
        completed_s=done_at - released,
        completed=sum(rec.status.value == "completed" for rec in records),
        submit_cost=RedisCost.between(before, submitted, jobs),
        process_cost=RedisCost.between(submitted, after, jobs),
    )


# --- redis-benchmark --------------------------------------------------------------------------

# The name may hold colons (a custom command's keys): the figure follows the last one.
_RATE = re.compile(r"^\s*(.*):\s*([\d.]+) requests per second", re.MULTILINE)


def redis_benchmark(port: int, *args: str) -> dict[str, float]:
    """Requests per second by test name, as ``redis-benchmark -q`` prints them."""
    out = subprocess.run(
        ["redis-benchmark", "-p", str(port), "-q", *args],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    # -q rewrites its progress line with carriage returns; the final figure ends each line.
    text = "\n".join(line.rsplit("\r", 1)[-1] for line in out.splitlines())
    return {name.strip(): float(rate) for name, rate in _RATE.findall(text)}


def redis_capacity(port: int) -> dict[str, float]:
    """This Redis's rates for the commands that dominate a job, in requests per second."""
    n, keyspace = str(BENCH_REQUESTS), ("-r", "100000")
    # redis-benchmark 7.0 has no built-in XADD test: a job-sized entry on one capped stream.
    xadd = ("xadd", "rb:jobs", "MAXLEN", "~", "100000", "*", "job", "x" * 600)
    rates: dict[str, float] = {}
    for piped in ((), ("-P", "16")):
        label = "(pipelined 16)" if piped else "(1 per round trip)"
        simple = redis_benchmark(port, "-n", n, *keyspace, *piped, "-t", "set,get,hset")
        rates.update({f"{k} {label}": v for k, v in simple.items()})
        rates[f"XADD {label}"] = _only(redis_benchmark(port, "-n", n, *piped, *xadd))
    script = redis_benchmark(
        port, "-n", n, *keyspace,
        "eval", EMIT_LIKE_LUA, "3",
        "rb:job:__rand_int__", "rb:log:__rand_int__", "rb:chan", "Generating: step 1/1",
    )  # fmt: skip
    rates["EVAL emit-like script (1 per round trip, 4 calls inside)"] = _only(script)
    blobs = redis_benchmark(
        port, "-n", str(BLOB_REQUESTS), "-d", str(BLOB_BYTES), "-c", "4", "-t", "set,get"
    )
    rates.update({f"{k} of a {BLOB_BYTES / 1e6:.1f} MB blob": v for k, v in blobs.items()})
    return rates


def _only(rates: dict[str, float]) -> float:
    (rate,) = rates.values()
    return rate


# --- putting it together ----------------------------------------------------------------------


def machine() -> dict[str, Any]:
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


@dataclass(frozen=True)
class StepCost:
    """A job's Redis cost as a fixed part plus a part per denoising step."""

    base_commands: float
    commands_per_step: float
    base_cpu_ms: float
    cpu_ms_per_step: float

    @classmethod
    def fit(cls, short: Run, long: Run, short_steps: int, long_steps: int) -> StepCost:
        extra = long_steps - short_steps
        per_step = (long.cost.commands - short.cost.commands) / extra
        cpu_per_step = max(0.0, (long.cost.cpu_ms - short.cost.cpu_ms) / extra)
        return cls(
            base_commands=short.cost.commands - per_step * short_steps,
            commands_per_step=per_step,
            base_cpu_ms=short.cost.cpu_ms - cpu_per_step * short_steps,
            cpu_ms_per_step=cpu_per_step,
        )

    def commands(self, steps: int) -> float:
        return self.base_commands + self.commands_per_step * steps

    def cpu_ms(self, steps: int) -> float:
        return self.base_cpu_ms + self.cpu_ms_per_step * steps


def capacity(
    runs: list[Run], steps: StepCost, measured_steps: int, rates: dict[str, float]
) -> dict[str, Any]:
    """Jobs per second one Redis carries, by two independent estimates, for the jobs measured
    here and for jobs of the seeds' default step count, and the workers it takes to saturate."""
    # Conservative: the slowest unpipelined simple command, and every command (script-internal
    # ones too, which cost far less than a round trip) counted as a full request.
    ops_s = min(v for k, v in rates.items() if k.endswith("(1 per round trip)"))
    one_worker = min(runs, key=lambda run: run.workers)

    def carry(step_count: int) -> dict[str, float]:
        commands, cpu_ms = steps.commands(step_count), steps.cpu_ms(step_count)
        # By CPU: Redis's own CPU time per job under the real mix (one core runs its commands).
        by_ops, by_cpu = ops_s / commands, 1000 / cpu_ms
        return {
            "steps": step_count,
            "commands_per_job": round(commands, 1),
            "redis_cpu_ms_per_job": round(cpu_ms, 3),
            "jobs_s_by_ops": round(by_ops),
            "jobs_s_by_cpu": round(by_cpu),
            "jobs_s_one_redis": round(min(by_ops, by_cpu)),
        }

    measured = carry(measured_steps)
    measured["per_worker_jobs_s"] = round(one_worker.jobs_s, 1)
    measured["workers_to_saturate"] = round(measured["jobs_s_one_redis"] / one_worker.jobs_s)
    default = carry(DEFAULT_STEPS)
    default["assumed_gpu_jobs_s"] = EXAMPLE_GPU_JOBS_S
    default["gpus_to_saturate"] = round(default["jobs_s_one_redis"] / EXAMPLE_GPU_JOBS_S)
    blob_set_s = next(v for k, v in rates.items() if k.startswith("SET of a"))
    blob_get_s = next(v for k, v in rates.items() if k.startswith("GET of a"))
    return {
        "redis_ops_s": round(ops_s),
        "commands_per_step": round(steps.commands_per_step, 2),
        "redis_cpu_ms_per_step": round(steps.cpu_ms_per_step, 4),
        "measured_jobs": measured,
        "default_steps_jobs": default,
        "bytes_through_redis_per_job": round(
            max(run.cost.net_in_bytes + run.cost.net_out_bytes for run in runs)
        ),
        # A real output is written once (worker) and read once (uploader).
        "blob_bytes": BLOB_BYTES,
        "jobs_s_by_blob_bandwidth": round(1 / (1 / blob_set_s + 1 / blob_get_s)),
    }


def print_report(result: dict[str, Any]) -> None:
    p = result["parameters"]
    print(
        f"\n{p['jobs']} jobs per run, {p['width']}×{p['height']}, {p['steps']} step(s), "
        f"guidance {p['guidance_scale']}; {result['machine']['cpu_count']} CPU cores "
        f"(load average {result['machine']['load_average_at_start']} at start, "
        f"{result['machine']['load_average_at_end']} at end)"
    )
    print(
        f"{'workers':>7} {'threads':>7} {'steps':>5} {'submit/s':>8} {'rendered/s':>10} "
        f"{'jobs/s':>7} {'per worker':>10} {'cmds/job':>8} {'scripts/job':>11} "
        f"{'Redis CPU ms/job':>16} {'bytes/job':>9}"
    )
    for run in [*result["runs"], result["step_profile"]]:
        cost = run["redis_per_job"]
        print(
            f"{run['workers']:>7} {run['torch_threads']:>7} {run['steps']:>5} "
            f"{run['submit_jobs_s']:>8.1f} {run['rendered_jobs_s']:>10.1f} {run['jobs_s']:>7.1f} "
            f"{run['jobs_s'] / run['workers']:>10.1f} {cost['commands']:>8.1f} "
            f"{cost['scripts']:>11.1f} {cost['cpu_ms']:>16.3f} "
            f"{cost['net_in_bytes'] + cost['net_out_bytes']:>9.0f}"
        )
    print("\nredis-benchmark on this machine (requests/s):")
    for name, rate in result["redis_benchmark"].items():
        print(f"  {name:<58} {rate:>10,.0f}")
    c = result["capacity"]
    m, d = c["measured_jobs"], c["default_steps_jobs"]
    print(
        f"\nA job costs Redis {m['commands_per_job']} commands at {m['steps']} step(s), "
        f"+ {c['commands_per_step']} per further denoising step (its progress event), and "
        f"{m['redis_cpu_ms_per_job']} ms of Redis CPU + {c['redis_cpu_ms_per_step']} ms a step."
    )
    for label, x in (("these jobs", m), (f"{d['steps']}-step jobs", d)):
        print(
            f"One Redis, {label}: {c['redis_ops_s']:,} ops/s ÷ {x['commands_per_job']} commands "
            f"= {x['jobs_s_by_ops']:,} jobs/s; by CPU, 1000 ms ÷ {x['redis_cpu_ms_per_job']} ms "
            f"= {x['jobs_s_by_cpu']:,} jobs/s: it carries ~{x['jobs_s_one_redis']:,} jobs/s."
        )
    print(
        f"Workers to saturate it: {m['workers_to_saturate']:,} at the measured "
        f"{m['per_worker_jobs_s']} jobs/s of one worker here; {d['gpus_to_saturate']:,} GPU "
        f"workers at an assumed {d['assumed_gpu_jobs_s']} {d['steps']}-step job/s each."
    )
    print(
        f"Bytes through Redis per job here: {c['bytes_through_redis_per_job']:,} "
        f"(a {p['width']}×{p['height']} PNG). A real output is written once and read once: "
        f"at {c['blob_bytes'] / 1e6:.1f} MB an image, blob traffic alone caps one Redis near "
        f"{c['jobs_s_by_blob_bandwidth']:,} jobs/s."
    )
    print(f"\n{result['note']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=300, help="jobs per worker count")
    parser.add_argument("--workers", default="1,2,3,4", help="worker counts, comma-separated")
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--guidance-scale", type=float, default=0.0)
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=None,
        help="per worker (default: (cores - 1) ÷ workers, at least 1)",
    )
    parser.add_argument("--keep", type=Path, default=None, help="keep logs in this directory")
    parser.add_argument("--skip-redis-benchmark", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS_FILE)
    args = parser.parse_args()
    counts = [int(n) for n in args.workers.split(",")]
    body = {
        "prompt": "a lighthouse at dusk",
        "width": args.width,
        "height": args.height,
        "num_inference_steps": args.steps,
        "guidance_scale": args.guidance_scale,
    }
    result: dict[str, Any] = {
        "machine": machine(),
        "parameters": {
            "jobs": args.jobs,
            "worker_counts": counts,
            "width": args.width,
            "height": args.height,
            "steps": args.steps,
            "guidance_scale": args.guidance_scale,
            "block_ms": BLOCK_MS,
            "torch_threads_per_worker": args.torch_threads or "(cores - 1) ÷ workers, at least 1",
            "model": "tiny random-weight Stable Diffusion (gpu_worker/tiny)",
            "redis_benchmark_requests": BENCH_REQUESTS,
            "blob_bytes": BLOB_BYTES,
        },
    }
    with tempfile.TemporaryDirectory(prefix="darkroom-scaling-") as tmp:
        workdir = args.keep or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        server = RedisServer(workdir / "redis")
        server.start()
        front: Stack | None = None
        try:
            print("writing the tiny checkpoint…", file=sys.stderr)
            from gpu_worker.tiny import make_tiny

            make_tiny("stable-diffusion", workdir / "models" / "stable-diffusion")
            models_file = workdir / "models" / "models.toml"
            write_catalog(demo_catalog(workdir / "models"), models_file)
            port = free_port()
            env = stack_env(
                redis_url=server.url,
                prefix=KEY_PREFIX,
                models_file=models_file,
                workdir=workdir,
                port=port,
                extra={"DARKROOM_ROUTES": "sd", "DARKROOM_BLOCK_MS": str(BLOCK_MS)},
            )
            front = Stack(name="bench", workdir=workdir, env=env, port=port)
            front.start("uploader", "gateway")
            r = redis.Redis.from_url(server.url, decode_responses=True)
            runs = []
            for count in counts:
                print(f"{count} worker(s), {args.jobs} jobs…", file=sys.stderr)
                runs.append(run_once(front, workdir, r, count, args.jobs, body, args.torch_threads))
                if runs[-1].completed != args.jobs:
                    sys.exit(f"only {runs[-1].completed} of {args.jobs} jobs completed")
            # The per-step cost: as many workers as cores, more steps, fewer jobs.
            profile_workers = min(os.cpu_count() or 1, max(counts))
            profile_jobs = max(args.jobs // 3, 30)
            print(f"{profile_workers} worker(s), {profile_jobs} jobs of {PROFILE_STEPS} steps…",
                  file=sys.stderr)  # fmt: skip
            profile = run_once(
                front, workdir, r, profile_workers, profile_jobs,
                {**body, "num_inference_steps": PROFILE_STEPS}, args.torch_threads,
            )  # fmt: skip
            if profile.completed != profile_jobs:
                sys.exit(f"only {profile.completed} of {profile_jobs} jobs completed")
            short = next((run for run in runs if run.workers == profile_workers), runs[0])
            steps = StepCost.fit(short, profile, args.steps, PROFILE_STEPS)
            if args.skip_redis_benchmark:
                rates = {}
            else:
                print("redis-benchmark…", file=sys.stderr)
                rates = redis_capacity(server.port)
            r.close()
        finally:
            if front is not None:
                front.stop_all()
            server.stop()
    result["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    result["runs"] = [_run_summary(run, args.steps) for run in runs]
    result["step_profile"] = _run_summary(profile, PROFILE_STEPS)
    result["redis_benchmark"] = {k: round(v) for k, v in rates.items()}
    if rates:
        result["capacity"] = capacity(runs, steps, args.steps, rates)
    result["note"] = (
        f"This machine has {os.cpu_count()} CPU cores shared by the workers, the gateway, the "
        "uploader, Redis, redis-benchmark and this driver, and the renders are CPU-bound: past "
        "the core count more workers cannot add throughput, only share it, so the table shows "
        "that throughput holds as workers join, not linear scaling. On GPUs each worker brings "
        "its own device; Redis is then the shared part, and the capacity lines say how far it goes."
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    if rates:
        print_report(result)
    print(f"\nwritten to {args.out}")


def _run_summary(run: Run, steps: int) -> dict[str, Any]:
    return {
        **{k: v for k, v in asdict(run).items() if k not in ("submit_cost", "process_cost")},
        "steps": steps,
        "submit_jobs_s": round(run.jobs / run.submit_s, 1),
        "rendered_jobs_s": round(run.rendered_jobs_s, 2),
        "jobs_s": round(run.jobs_s, 2),
        "redis_per_job": _rounded(asdict(run.cost)),
        "redis_per_job_submit": _rounded(asdict(run.submit_cost)),
        "redis_per_job_render_and_upload": _rounded(asdict(run.process_cost)),
    }


def _rounded(values: dict[str, Any]) -> dict[str, Any]:
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in values.items()}


if __name__ == "__main__":
    main()
