"""The comparison for ``bench.vs_ray``: the same checkpoint served as a team would with Ray Serve.

One replica, ``@serve.batch(max_batch_size=8, batch_wait_timeout_s=0.005)``; each POST renders
(batched with whatever else has arrived), saves the PNG and answers with its URL. No queue, no
durability, no progress: what Ray Serve gives for a few lines. The pipeline is loaded by
Darkroom's own loader and called through the same family code, and the PNG is encoded by the
same encoder, so the render and the bytes are the same as the worker's.

    uv run --group ray python -m bench.ray_serve_app MODELS_FILE OUT_DIR PORT

Prints ``ready`` once the deployment answers, then serves until killed.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import ray
from ray import serve
from starlette.requests import Request

ROUTE = "sd"
MAX_BATCH = 8
BATCH_WAIT_S = 0.005


class Generator:
    def __init__(self, models_file: str, out_dir: str, torch_threads: int) -> None:
        import torch

        from common.catalog import Catalog
        from gpu_worker.registry import ModelRegistry

        # Ray sets OMP_NUM_THREADS=1 in its workers; the bench gives the replica the threads
        # it gives the Darkroom worker.
        torch.set_num_threads(torch_threads)
        registry = ModelRegistry(Catalog.load(Path(models_file)), [ROUTE], torch.device("cpu"))
        registry.load_all()
        self.pipelines = registry.pipelines(ROUTE)
        self.family = registry.routes[ROUTE].family
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.made = 0

    @serve.batch(max_batch_size=MAX_BATCH, batch_wait_timeout_s=BATCH_WAIT_S)
    async def render(self, bodies: list[dict[str, Any]]) -> list[dict[str, str]]:
        from common.schemas import JobSpec, RenderParams, Task
        from gpu_worker.encoding import encode
        from gpu_worker.families import batch_family

        specs = []
        for body in bodies:
            self.made += 1
            specs.append(
                JobSpec(
                    job_id=f"ray-{os.getpid()}-{self.made}",
                    model=ROUTE,
                    task=Task.T2I,
                    params=RenderParams(**body),
                    created_at=datetime.now(UTC),
                )
            )
        batcher = batch_family(self.family)
        assert batcher is not None
        outputs = batcher.render_batch(
            self.pipelines, specs, [None] * len(specs), lambda done, total: None
        )
        urls = []
        for spec, artifacts in zip(specs, outputs, strict=True):
            path = self.out_dir / f"{spec.job_id}.png"
            path.write_bytes(encode(artifacts[0]).data)
            urls.append({"url": path.as_uri()})
        return urls

    async def __call__(self, request: Request) -> dict[str, str]:
        answer: dict[str, str] = await self.render(await request.json())
        return answer


# One replica (Serve's default), with room for every client's request at once.
DEPLOYMENT = serve.deployment(max_ongoing_requests=256, ray_actor_options={"num_cpus": 0})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("models_file")
    parser.add_argument("out_dir")
    parser.add_argument("port", type=int)
    parser.add_argument("--torch-threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    ray.init(
        # Ray's own processes talk over loopback too, not the machine's address.
        _node_ip_address="127.0.0.1",
        include_dashboard=False,
        object_store_memory=256 * 1024 * 1024,
        log_to_driver=False,
        configure_logging=False,
    )
    serve.start(http_options={"host": "127.0.0.1", "port": args.port})
    serve.run(
        DEPLOYMENT(Generator).bind(args.models_file, args.out_dir, args.torch_threads),
        route_prefix="/generate",
    )
    print("ready", flush=True)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    try:
        signal.pause()
    finally:
        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    main()
