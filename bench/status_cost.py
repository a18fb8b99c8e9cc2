"""The gateway's CPU for one status read and for one SSE event, each measured alone.

Starts ``darkroom up`` as ``bench.vs_ray`` does (auth on, one API key), finishes a few jobs,
then, with nothing else running:

- idle: the gateway's CPU over a quiet window (its sweeper, its pub/sub), subtracted below;
- status reads: ``GET /api/{id}/status`` and ``GET /v1/jobs/{id}`` of finished jobs at a fixed
  rate over keep-alive connections (8 connections every 20 ms: 400 reads a second);
- SSE: feeds of finished jobs opened one after another, resumed with ``Last-Event-ID`` one
  before the end (one event sent) and with ``0`` (every logged event sent): the difference is
  the cost of one event, the rest the cost of opening a feed.

The client is a few lines of asyncio over raw HTTP/1.1, so it costs the gateway nothing an
ordinary client would not. CPU is the gateway process's (psutil), in ms per request or event.

    uv run python -m bench.status_cost --models /path/to/.darkroom/models

Writes bench/results/status_cost.json.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import platform
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench.vs_ray import ROOT, body, cpu_seconds, darkroom, http_client, models_cache
from common.local import default_torch_threads

RESULTS = Path(__file__).parent / "results" / "status_cost.json"
FINISHED_JOBS = 8


class Connection:
    """One keep-alive HTTP/1.1 connection that sends GETs and reads whole answers
    (Content-Length or chunked)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> Connection:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def get(self, request: bytes) -> tuple[int, bytes]:
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {
            name.strip().lower(): value.strip()
            for name, _, value in (line.partition(":") for line in lines[1:] if line)
        }
        if "content-length" in headers:
            return status, await self.reader.readexactly(int(headers["content-length"]))
        if headers.get("transfer-encoding") != "chunked":
            return status, b""
        chunks: list[bytes] = []
        while True:
            size = int((await self.reader.readuntil(b"\r\n")).strip(), 16)
            data = await self.reader.readexactly(size + 2)
            if size == 0:
                return status, b"".join(chunks)
            chunks.append(data[:-2])

    def close(self) -> None:
        self.writer.close()


def request_bytes(path: str, headers: dict[str, str]) -> bytes:
    lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def gateway_pid(root_pid: int) -> int:
    return next(pid for pid, (role, _) in cpu_seconds(root_pid).items() if role == "gateway")


def cpu_s(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


async def finished_jobs(base_url: str, headers: dict[str, str], count: int) -> list[str]:
    async with http_client(base_url, headers) as client:

        async def one(i: int) -> str:
            async with client.post("/api/sd/t2i", json={**body(i), "cache": False}) as answer:
                answer.raise_for_status()
                session: str = (await answer.json())["session_id"]
            while True:
                async with client.get(f"/api/{session}/status") as read:
                    state = await read.json()
                if state["status"] == "completed":
                    return session
                if state["status"] in ("failed", "canceled"):
                    raise RuntimeError(f"job {session} ended {state}")
                await asyncio.sleep(0.05)

        return list(await asyncio.gather(*(one(2 * 10**6 + i) for i in range(count))))


async def at_rate(
    port: int,
    requests: list[bytes],
    connections: int,
    interval_s: float,
    duration_s: float,
    check: Callable[[int, bytes], None],
) -> int:
    """Each connection sends the next of ``requests`` every ``interval_s``; the count sent."""
    sent = 0
    deadline = time.perf_counter() + duration_s

    async def loop(index: int) -> None:
        nonlocal sent
        conn = await Connection.open(port)
        try:
            i = index
            next_at = time.perf_counter()
            while next_at < deadline:
                status, data = await conn.get(requests[i % len(requests)])
                check(status, data)
                sent += 1
                i += connections
                next_at += interval_s
                await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
        finally:
            conn.close()

    await asyncio.gather(*(loop(i) for i in range(connections)))
    return sent


async def sequential(
    port: int, requests: list[bytes], count: int, check: Callable[[int, bytes], None]
) -> int:
    conn = await Connection.open(port)
    try:
        for i in range(count):
            status, data = await conn.get(requests[i % len(requests)])
            check(status, data)
    finally:
        conn.close()
    return count


async def measured(
    gateway: psutil.Process, idle_ms_per_s: float, run: Callable[[], Awaitable[int]]
) -> dict[str, Any]:
    """The gateway's CPU over ``run``, less its idle CPU for as long, per request."""
    began_cpu, began = cpu_s(gateway), time.perf_counter()
    count = await run()
    cpu_ms = (cpu_s(gateway) - began_cpu) * 1000
    wall_s = time.perf_counter() - began
    net_ms = cpu_ms - idle_ms_per_s * wall_s
    return {
        "requests": count,
        "per_s": round(count / wall_s, 1),
        "gateway_cpu_ms": round(cpu_ms, 1),
        "cpu_ms_per_request": round(net_ms / max(1, count), 4),
    }


def expect(status_code: int, needle: bytes | None = None) -> Callable[[int, bytes], None]:
    def check(status: int, data: bytes) -> None:
        if status != status_code or (needle is not None and needle not in data):
            raise RuntimeError(f"unexpected answer {status}: {data[:200]!r}")

    return check


async def measure(port: int, pid: int, headers: dict[str, str], args: argparse.Namespace) -> Any:
    base_url = f"http://127.0.0.1:{port}"
    jobs = await finished_jobs(base_url, headers, FINISHED_JOBS)
    async with httpx.AsyncClient(base_url=base_url, headers=headers) as client:
        # Each job's last event id: how many events its log holds.
        seqs = {
            job: int((await client.get(f"/v1/jobs/{job}/events")).text.split("\r\n")[0][4:])
            for job in jobs
        }
    # Every job read alike: those with the most common number of events.
    seq = max(set(seqs.values()), key=list(seqs.values()).count)
    jobs = [job for job in jobs if seqs[job] == seq]
    gateway = psutil.Process(pid)
    out: dict[str, Any] = {"events_per_job": seq}

    began_cpu = cpu_s(gateway)
    await asyncio.sleep(args.idle_s)
    idle = (cpu_s(gateway) - began_cpu) * 1000 / args.idle_s
    out["idle_cpu_ms_per_s"] = round(idle, 2)

    connections, interval_s = args.connections, args.interval_ms / 1000
    reads = (
        ("api_status", "/api/{}/status", b'"completed"'),
        ("v1_job", "/v1/jobs/{}", b"SUCCESS"),
    )
    for name, path, done in reads:
        requests = [request_bytes(path.format(job), headers) for job in jobs]
        run = functools.partial(
            at_rate, port, requests, connections, interval_s, args.duration_s, expect(200, done)
        )
        out[name] = await measured(gateway, idle, run)
        print(f"{name}: {json.dumps(out[name])}", flush=True)

    feeds: dict[str, Any] = {}
    for name, last_id in (("one_event", seq - 1), ("all_events", 0)):
        requests = [
            request_bytes(f"/api/{job}/events", {**headers, "Last-Event-ID": str(last_id)})
            for job in jobs
        ]
        run = functools.partial(sequential, port, requests, args.feeds, expect(200, b"completed"))
        feeds[name] = await measured(gateway, idle, run)
        print(f"feed {name}: {json.dumps(feeds[name])}", flush=True)
    one, every = feeds["one_event"]["cpu_ms_per_request"], feeds["all_events"]["cpu_ms_per_request"]
    per_event = (every - one) / max(1, seq - 1)
    feeds["cpu_ms_per_event"] = round(per_event, 4)
    feeds["cpu_ms_per_feed_open"] = round(one - per_event, 4)
    out["sse"] = feeds
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--models", type=Path, default=ROOT / ".darkroom" / "models")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--interval-ms", type=float, default=20.0)
    parser.add_argument("--duration-s", type=float, default=10.0)
    parser.add_argument("--idle-s", type=float, default=5.0)
    parser.add_argument("--feeds", type=int, default=2000, help="feeds opened per kind")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    models = models_cache(args.models.resolve())
    with (
        tempfile.TemporaryDirectory(prefix="status-cost-") as tmp,
        darkroom(Path(tmp) / "darkroom", models, default_torch_threads()) as system,
    ):
        port = int(system.base_url.rsplit(":", 1)[1])
        pid = gateway_pid(system.pid)
        figures = asyncio.run(measure(port, pid, system.headers, args))
    result = {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "load_avg_at_end": [round(x, 2) for x in os.getloadavg()],
        },
        "params": {
            "connections": args.connections,
            "interval_ms": args.interval_ms,
            "duration_s": args.duration_s,
            "feeds": args.feeds,
        },
        **figures,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
