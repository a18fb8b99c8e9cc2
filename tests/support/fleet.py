"""Many jobs across several workers of one stack, and the evidence of what became of each.

The evidence does not lean on any one service's internals: the job records (``JobRecord``), the
stored objects (one per job), the hand-offs on the ``rendered`` stream (Redis's own count of
entries ever added) and, per worker, the ``job.rendered`` log lines.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import redis

from common.jobs import parse_record
from common.keys import Keys
from common.schemas import JobRecord, JobSpec, JobStatus
from common.tenants import PRIORITIES
from tests.support.stack import Stack
from tests.support.waiting import POLL_S, wait_for

UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
# Submitting from a few threads keeps the queue ahead of the workers without swamping the gateway.
SUBMIT_THREADS = 4


def submit_jobs(
    client: httpx.Client,
    path: str,
    body: dict[str, Any],
    count: int,
    *,
    api_keys: Sequence[str] = (),
) -> list[str]:
    """Submit ``count`` copies of ``body`` (seeds 0…count-1); the job ids, in submission order.
    Every one renders: they bypass the result cache, since those who call this count renders.
    The jobs take the priority classes in turn, and with ``api_keys`` the tenants in turn too,
    so the scheduler's every structure is exercised."""

    def one(seed: int) -> str:
        headers = {"Authorization": f"Bearer {api_keys[seed % len(api_keys)]}"} if api_keys else {}
        priority = PRIORITIES[seed % len(PRIORITIES)]
        response = client.post(
            path, json={**body, "seed": seed, "cache": False, "priority": priority}, headers=headers
        )
        assert response.status_code == 200, response.text
        return str(response.json()["session_id"])

    with ThreadPoolExecutor(SUBMIT_THREADS) as pool:
        return list(pool.map(one, range(count)))


def job_records(r: redis.Redis, keys: Keys, job_ids: Iterable[str]) -> dict[str, JobRecord | None]:
    """Each job's record as the services keep it; ``None`` for one that does not exist."""
    ids = list(job_ids)
    with r.pipeline(transaction=False) as pipe:
        for job_id in ids:
            pipe.hgetall(keys.job(job_id))
        raws = pipe.execute()
    return {
        job_id: parse_record(raw) if raw else None for job_id, raw in zip(ids, raws, strict=True)
    }


def wait_all_terminal(
    stack: Stack,
    r: redis.Redis,
    job_ids: Iterable[str],
    *,
    routes: Iterable[str] = ("sd",),
    timeout_s: float,
) -> dict[str, JobRecord | None]:
    """Poll until every job is terminal (or gone); returns the records.

    Fails at once, not at the deadline, when a service of the stack exits, or when jobs are
    lost: unfinished while no stream holds an entry for any job. Entries leave the routes'
    backlogs only when their job ends, and ``rendered`` only once the uploader holds the work
    (acked entries are deleted), so with both empty nothing is in flight; the streams and the
    statuses are read in one transaction, so that is one moment's truth.
    """
    ids = list(job_ids)
    keys = Keys(stack.prefix)
    # A job's backlog entry lives from its submit to its end: waiting, ready or rendering.
    streams = [*(keys.backlog(route) for route in routes), keys.rendered]
    deadline = time.monotonic() + timeout_s
    while True:
        check_alive(stack)
        with r.pipeline(transaction=True) as pipe:
            for stream in streams:
                pipe.xlen(stream)
            for job_id in ids:
                pipe.hget(keys.job(job_id), "status")
            replies = pipe.execute()
        in_flight, statuses = sum(replies[: len(streams)]), replies[len(streams) :]
        unfinished = [s for s in statuses if s is not None and not JobStatus(s).terminal]
        if not unfinished:
            return job_records(r, keys, ids)
        if not in_flight:
            raise AssertionError(
                f"{len(unfinished)} jobs lost: unfinished ({dict(Counter(unfinished))}) "
                f"while {', '.join(streams)} hold no entry"
            )
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"{len(unfinished)} of {len(ids)} jobs unfinished after {timeout_s}s: "
                f"{dict(Counter(statuses))}, {in_flight} stream entries"
            )
        time.sleep(POLL_S * 4)


def check_alive(stack: Stack) -> None:
    for service, process in stack.processes.items():
        if process.poll() is not None:
            raise RuntimeError(f"{stack.name} {service} exited:\n{stack.log(service)[-3000:]}")


def count_completed(r: redis.Redis, keys: Keys, job_ids: Iterable[str]) -> int:
    records = job_records(r, keys, job_ids).values()
    return sum(rec is not None and rec.status.value == "completed" for rec in records)


def stored_results(output_dir: Path) -> Counter[str]:
    """Stored objects per job id, from the local storage's ``generations/`` folder."""
    found: Counter[str] = Counter()
    for path in (output_dir / "generations").glob("*"):
        match = UUID_RE.search(path.name)
        found[match.group(0) if match else path.name] += 1
    return found


def handoffs(r: redis.Redis, keys: Keys) -> int:
    """Entries ever added to the ``rendered`` stream: one per job a worker handed on. Acked
    entries are deleted, so the stream's length says nothing; Redis keeps this count anyway."""
    try:
        info: Mapping[str, Any] = r.xinfo_stream(keys.rendered)
    except redis.ResponseError as exc:
        if "no such key" in str(exc):
            return 0  # no worker has handed anything on yet
        raise
    return int(info["entries-added"])


def renders_by_worker(stack: Stack, workers: Iterable[str]) -> dict[str, Counter[str]]:
    """Per worker service, how many ``job.rendered`` lines its log holds for each job id."""
    counts: dict[str, Counter[str]] = {}
    for worker in workers:
        counts[worker] = Counter()
        for line in stack.log(worker).splitlines():
            if '"job.rendered"' not in line:
                continue
            entry = json.loads(line)
            if entry.get("event") == "job.rendered":
                counts[worker][entry["job_id"]] += 1
    return counts


@dataclass(frozen=True)
class Consumer:
    """A worker process's identity in a consumer group: its name ends in its pid by default
    (``<host>-<pid>``). Kept by pid, so it still names the entries of a worker that was killed."""

    pid: int

    @classmethod
    def of(cls, stack: Stack, service: str) -> Consumer:
        return cls(stack.processes[service].pid)

    def owns(self, consumer_name: str) -> bool:
        return consumer_name.rsplit("-", 1)[-1] == str(self.pid)

    def pending_jobs(self, r: redis.Redis, stream: str, group: str) -> list[str]:
        """Ids of the jobs whose entries this worker has read and not acked (nor lost)."""
        entries = r.xpending_range(stream, group, min="-", max="+", count=10_000)
        job_ids: list[str] = []
        for entry in entries:
            if not self.owns(str(entry["consumer"])):
                continue
            msg_id = str(entry["message_id"])
            found: list[tuple[str, dict[str, str]]]
            found = r.xrange(stream, min=msg_id, max=msg_id)  # type: ignore[assignment]
            job_ids.extend(JobSpec.model_validate_json(fields["job"]).job_id for _, fields in found)
        return job_ids


def kill_while_holding(
    stack: Stack,
    service: str,
    r: redis.Redis,
    stream: str,
    group: str,
    *,
    timeout_s: float,
    enough: Callable[[list[str]], bool] = bool,
) -> list[str]:
    """SIGKILL a worker at a moment it holds jobs (``enough`` of them: at least one by
    default); the ids of the jobs it held.

    The worker is frozen (SIGSTOP) while its pending entries are read, and thawed to try again
    if it held too few, so the list is exactly what died with it."""
    process = stack.processes[service]
    consumer = Consumer(process.pid)

    def held_while_frozen() -> list[str]:
        check_alive(stack)
        process.send_signal(signal.SIGSTOP)
        held = consumer.pending_jobs(r, stream, group)
        if not enough(held):
            process.send_signal(signal.SIGCONT)
            return []
        return held

    held = wait_for(held_while_frozen, timeout_s=timeout_s, what=f"{service} to hold a job")
    stack.stop(service, signal.SIGKILL)
    return held


def begin_stop(stack: Stack, service: str, sig: signal.Signals) -> subprocess.Popen[bytes]:
    """Signal a service without waiting for it to exit; the caller waits on the process."""
    process = stack.processes.pop(service)
    process.send_signal(sig)
    return process
