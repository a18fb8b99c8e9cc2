"""What Darkroom keeps in Redis: bytes per queued job, and what is left once jobs are done.

Each figure comes from Redis's own ``used_memory`` (after ``MEMORY PURGE``) on a redis-server of
its own, so nothing else moves it:

- queued t2i: a gateway alone (no worker, so jobs wait), N text-to-image submits;
- queued i2i: the same with a 1 MiB input image each (noise, so PNG cannot shrink it);
- after 1,000 jobs: the whole stack (gateway, worker, uploader; local storage) renders 1,000 tiny
  jobs, then waits for their records' TTL (``TASK_TTL``, short here) to pass: what remains is
  the fixed cost (streams, consumer groups, scripts, heartbeats), not per-job state.

    uv run python -m bench.redis_memory [--queued 200] [--finished 1000] [--task-ttl-s 5]

Prints the figures and writes bench/results/redis_memory.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import redis

from bench.scaling import machine
from common.catalog import demo_catalog, write_catalog
from common.redis_server import RedisServer, free_port
from gpu_worker.tiny import make_all
from tests.support.client import noise_png
from tests.support.fleet import stored_results, submit_jobs, wait_all_terminal
from tests.support.stack import Stack, stack_env

RESULTS = Path(__file__).parent / "results" / "redis_memory.json"
T2I = {"prompt": "a lighthouse at dusk", "width": 64, "height": 64, "num_inference_steps": 2}
INPUT_BYTES = 1024 * 1024


# Redis shrinks a connection's query buffer (which a 1 MiB argument grew) after 2 s idle; wait
# that out so the figures are what Redis keeps, not what the last request borrowed.
QUERY_BUFFER_IDLE_S = 3.0


def used_memory(r: redis.Redis) -> int:
    time.sleep(QUERY_BUFFER_IDLE_S)
    r.memory_purge()
    return int(r.info("memory")["used_memory"])


def start_stack(
    name: str,
    services: tuple[str, ...],
    server: RedisServer,
    models_file: Path,
    root: Path,
    **env: str,
) -> Stack:
    workdir = root / name
    workdir.mkdir()
    port = free_port()
    stack = Stack(
        name=name,
        workdir=workdir,
        env=stack_env(
            redis_url=server.url,
            prefix=f"{name}:",
            models_file=models_file,
            workdir=workdir,
            port=port,
            extra={"DARKROOM_ROUTES": "sd", **env},
        ),
        port=port,
    )
    stack.start(*services)
    return stack


def queued_cost(models_file: Path, root: Path, queued: int) -> dict[str, Any]:
    server = RedisServer(root / "redis-queued")
    server.start()
    stack = start_stack("queued", ("gateway",), server, models_file, root)
    r = redis.Redis.from_url(server.url)
    try:
        with httpx.Client(base_url=stack.base_url, timeout=30) as client:
            client.post("/api/sd/t2i", json=T2I).raise_for_status()  # scripts loaded, stream made
            start = used_memory(r)
            submit_jobs(client, "/api/sd/t2i", T2I, queued)
            t2i = (used_memory(r) - start) / queued

            images = [noise_png(INPUT_BYTES, seed) for seed in range(queued // 10)]
            start = used_memory(r)
            for image in images:
                files = {"image": ("in.png", image, "image/png")}
                data = {"prompt": "a watercolor", "strength": "0.5", "num_inference_steps": "2"}
                client.post("/api/sd/i2i", files=files, data=data).raise_for_status()
            i2i = (used_memory(r) - start) / len(images)
        return {
            "queued_t2i_jobs": queued,
            "bytes_per_queued_t2i_job": round(t2i),
            "queued_i2i_jobs": len(images),
            "input_image_bytes": round(sum(map(len, images)) / len(images)),
            "bytes_per_queued_i2i_job": round(i2i),
        }
    finally:
        r.close()
        stack.stop_all()
        server.stop(kill=True)


def finished_cost(models_file: Path, root: Path, jobs: int, task_ttl_s: int) -> dict[str, Any]:
    server = RedisServer(root / "redis-finished")
    server.start()
    r = redis.Redis.from_url(server.url, decode_responses=True)
    empty = used_memory(r)
    stack = start_stack(
        "finished",
        ("worker", "uploader", "gateway"),
        server,
        models_file,
        root,
        TASK_TTL=str(task_ttl_s),
    )
    try:
        with httpx.Client(base_url=stack.base_url, timeout=30) as client:
            first = client.post("/api/sd/t2i", json=T2I).raise_for_status().json()["session_id"]
            # Done before the thousand go in: they fill the route's queue limit (1,000) exactly.
            wait_all_terminal(stack, r, [first], timeout_s=120)
            began = time.monotonic()
            job_ids = submit_jobs(client, "/api/sd/t2i", T2I, jobs)
            records = wait_all_terminal(stack, r, job_ids, timeout_s=jobs)
            took_s = time.monotonic() - began
            # Counted by stored result: a record that ended early may be gone already (its TTL
            # is short here), so the records' last read undercounts.
            stored = stored_results(Path(stack.env["DARKROOM_OUTPUT_DIR"]))
            completed = sum(stored[job_id] == 1 for job_id in records)
            peak = used_memory(r)
            time.sleep(task_ttl_s + 2)  # every record's and event log's TTL has passed
            after = used_memory(r)
            leftover = {key: int(r.memory_usage(key) or 0) for key in r.scan_iter(count=1000)}
        return {
            "finished_jobs": jobs,
            "completed": completed,
            "seconds": round(took_s, 1),
            "task_ttl_s": task_ttl_s,
            "used_memory_empty_bytes": empty,
            "used_memory_all_finished_bytes": peak,
            "used_memory_after_ttl_bytes": after,
            "keys_after_ttl_bytes": leftover,
        }
    finally:
        r.close()
        stack.stop_all()
        server.stop(kill=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queued", type=int, default=200)
    parser.add_argument("--finished", type=int, default=1000)
    parser.add_argument("--task-ttl-s", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="darkroom-bench-") as tmp:
        root = Path(tmp)
        make_all(root / "models")
        models_file = root / "models.toml"
        write_catalog(demo_catalog(root / "models"), models_file)
        queued = queued_cost(models_file, root, args.queued)
        print(json.dumps(queued, indent=2))
        finished = finished_cost(models_file, root, args.finished, args.task_ttl_s)
        print(json.dumps(finished, indent=2))
    result = {
        "benchmark": "redis_memory",
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "queued": queued,
        "finished": finished,
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
