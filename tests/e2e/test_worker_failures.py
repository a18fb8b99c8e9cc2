"""A worker that cannot do all it was asked: a route whose weights do not load, a render stuck
inside a step. Real worker processes on a real Redis, with the tiny checkpoints."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from common.catalog import Catalog, demo_catalog, write_catalog
from common.redis_server import RedisServer, free_port
from tests.conftest import _stack
from tests.support.client import wait_terminal
from tests.support.ledger import Ledger
from tests.support.stack import Stack
from tests.support.waiting import wait_for

SMALL = {"width": 64, "height": 64, "num_inference_steps": 6}
STALL_TIMEOUT_S = 5.0
# Longer than the test: only a release, never a silent worker's claim timing out, moves a job.
CLAIM_IDLE_MS = 600_000

# (name, models file, environment) → gateway and uploader running, no worker yet
StartStack = Callable[[str, Path, dict[str, str]], Stack]


def catalog_file(catalog: Catalog, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("catalog") / "models.toml"
    write_catalog(catalog, path)
    return path


def probe(port: int, path: str, status_code: int) -> httpx.Response | None:
    """The worker's probe answer, if it has this status code."""
    try:
        response = httpx.get(f"http://127.0.0.1:{port}{path}", timeout=2)
    except httpx.HTTPError:
        return None
    return response if response.status_code == status_code else None


def listing(client: httpx.Client) -> dict[str, dict[str, Any]]:
    return {m["name"]: m for m in client.get("/api/models").raise_for_status().json()}


def results(stack: Stack, job_id: str) -> list[Path]:
    return list((stack.workdir / "output" / "generations").glob(f"*{job_id}*"))


@pytest.fixture
def stack_on(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[StartStack]:
    """Gateway and uploader on a given catalogue; the test starts its workers."""
    stacks: list[Stack] = []

    def start(name: str, models_file: Path, extra: dict[str, str]) -> Stack:
        stack = _stack(
            name, ("uploader", "gateway"), redis_server, models_file, tmp_path_factory, extra
        )
        stacks.append(stack)
        return stack

    yield start
    for stack in stacks:
        stack.stop_all()


def test_a_route_whose_weights_fail_to_load_leaves_the_others_serving(
    stack_on: StartStack, tiny_models: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    catalog = demo_catalog(tiny_models)
    # A weights directory with nothing in it, as a volume that was never filled.
    empty = tmp_path_factory.mktemp("no-weights")
    catalog.routes["flux"] = catalog.routes["flux"].model_copy(update={"weights": str(empty)})
    stack = stack_on("halfloaded", catalog_file(catalog, tmp_path_factory), {})
    port = free_port()
    stack.start("worker", env={"DARKROOM_ROUTES": "sd,flux", "DARKROOM_HEALTH_PORT": str(port)})

    ready = wait_for(lambda: probe(port, "/readyz", 200), timeout_s=30, what="the worker ready")
    assert ready.json()["serving"] == ["sd"]
    assert "model_index.json" in ready.json()["failed"]["flux"]
    metrics = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    assert 'darkroom_model_load_failed{model="flux"} 1.0' in metrics

    with httpx.Client(base_url=stack.base_url, timeout=30) as client:
        models = wait_for(
            lambda: (m := listing(client))["sd"]["served"] and m,
            timeout_s=30,
            what="the worker's heartbeat",
        )
        assert models["sd"]["load_error"] is None
        assert models["flux"]["served"] is False
        assert "model_index.json" in models["flux"]["load_error"]

        sd = client.post("/api/sd/t2i", json={"prompt": "still served", **SMALL})
        flux = client.post("/api/flux/t2i", json={"prompt": "not loaded", **SMALL})
        sd_status = wait_terminal(client, f"/api/{sd.json()['session_id']}/status")
        flux_status = wait_terminal(client, f"/api/{flux.json()['session_id']}/status")
        assert sd_status["status"] == "completed", sd_status
        assert flux_status["status"] == "failed"
        assert "'flux' is unavailable: its weights failed to load" in flux_status["error"]
        assert listing(client)["flux"]["queued"] == 0  # failed at once: nothing piles up


def test_a_render_stuck_in_a_step_goes_to_another_worker_and_the_worker_is_not_live(
    stack_on: StartStack,
    tiny_models: Path,
    tmp_path_factory: pytest.TempPathFactory,
    ledger: Ledger,
) -> None:
    catalog = demo_catalog(tiny_models)
    sd = catalog.routes["sd"]
    catalog.routes["sd"] = sd.model_copy(update={"stall_timeout_s": STALL_TIMEOUT_S})
    stack = stack_on(
        "stall",
        catalog_file(catalog, tmp_path_factory),
        {"DARKROOM_ROUTES": "sd", "DARKROOM_CLAIM_IDLE_MS": str(CLAIM_IDLE_MS)},
    )
    port = free_port()
    # Worker a's render thread blocks for good after step 2, as inside a hung CUDA call.
    stack.start(
        "worker:a", env={"DARKROOM_HEALTH_PORT": str(port), "DARKROOM_TEST_HANG_AT_STEP": "2"}
    )
    r = redis.Redis.from_url(stack.env["REDIS_URL"], decode_responses=True)
    with httpx.Client(base_url=stack.base_url, timeout=30) as client:
        assert probe(port, "/livez", 200)
        job_id = client.post("/api/sd/t2i", json={"prompt": "stuck", **SMALL}).json()["session_id"]

        not_live = wait_for(
            lambda: probe(port, "/livez", 503),
            timeout_s=60,
            what="worker a to report itself not live",
        )
        ledger.fault("render stuck inside a step")
        assert "no denoising step" in not_live.json()["reason"]
        assert '"worker.render_stalled"' in stack.log("worker:a")
        assert probe(port, "/readyz", 503)
        assert client.get(f"/api/{job_id}/status").json()["status"] == "processing"

        # The job went back to the group at once: a second worker takes it well before any
        # claim idle time, and renders it.
        stack.start("worker:b")
        status = wait_terminal(client, f"/api/{job_id}/status", timeout_s=120)
    ledger.outcome([status["status"]], [len(results(stack, job_id))])
    assert status["status"] == "completed", status
    assert len(results(stack, job_id)) == 1
    assert r.hget(f"{stack.prefix}job:{job_id}", "attempts") == "2"  # the stuck one counted
    r.close()

    # What Kubernetes does to a worker that is not live: SIGTERM. The stuck thread cannot end,
    # so the process exits without it rather than hanging.
    assert stack.stop("worker:a", signal.SIGTERM, timeout_s=30) == 1
