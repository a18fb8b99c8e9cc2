"""The worker marks its pod busy while it holds jobs and idle after, through a loopback HTTP
server standing in for the Kubernetes API; a real worker on a real Redis and the tiny SD
checkpoint."""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import redis
import torch
from pydantic import ValidationError
from redis.asyncio import Redis

from common.catalog import demo_catalog
from common.redis_server import RedisServer
from gpu_worker.pod_cost import ANNOTATION, MERGE_PATCH, deletion_cost, pod_deletion_cost
from gpu_worker.registry import ModelRegistry
from gpu_worker.settings import WorkerSettings
from tests.gpu_worker.test_worker import Deployment
from tests.support.waiting import async_wait_for

NAMESPACE, POD = "darkroom", "gpu-worker-7d9f-abcde"
TOKEN = "a-projected-token"
# Enough steps that the render outlasts a round trip to the API stand-in.
STEPS = 12


@dataclass
class Patch:
    path: str
    content_type: str
    authorization: str
    cost: str
    rendered_then: int  # outputs handed to the uploader when the request came in


class KubeApi:
    """Answers every PATCH with ``status`` and records it, with how far the job had got."""

    def __init__(self, redis_url: str, rendered_stream: str) -> None:
        self.patches: list[Patch] = []
        self.status = 200
        self.rendered_stream = rendered_stream
        self._redis = redis.Redis.from_url(redis_url)
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_PATCH(self) -> None:  # noqa: N802  # http.server's naming
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                api.patches.append(
                    Patch(
                        path=self.path,
                        content_type=self.headers["Content-Type"],
                        authorization=self.headers["Authorization"],
                        cost=body["metadata"]["annotations"][ANNOTATION],
                        rendered_then=int(api._redis.xlen(api.rendered_stream)),
                    )
                )
                reply = json.dumps({"kind": "Pod"} if api.status == 200 else {"kind": "Status"})
                self.send_response(api.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply.encode())

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._redis.close()


@pytest.fixture(scope="module")
def registry(tiny_models: Path) -> ModelRegistry:
    catalog = demo_catalog(tiny_models)
    catalog = catalog.model_copy(update={"routes": {"sd": catalog.routes["sd"]}, "v1_route": "sd"})
    registry = ModelRegistry(catalog, ["sd"], torch.device("cpu"))
    registry.load_all()
    return registry


@pytest.fixture
async def deployment(
    redis_server: RedisServer, registry: ModelRegistry
) -> AsyncIterator[Deployment]:
    redis, blobs = (
        Redis.from_url(redis_server.url, decode_responses=True),
        Redis.from_url(redis_server.url),
    )
    yield Deployment(redis, blobs, registry)
    await redis.aclose()
    await blobs.aclose()


@pytest.fixture
def kube_api(redis_server: RedisServer, deployment: Deployment) -> Iterator[KubeApi]:
    api = KubeApi(redis_server.url, deployment.keys.rendered)
    yield api
    api.close()


def in_pod(kube_api: KubeApi, tmp_path: Path) -> WorkerSettings:
    """The settings of a worker in a pod, its API server the loopback stand-in."""
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    return WorkerSettings(
        pod_name=POD,
        pod_namespace=NAMESPACE,
        kubernetes_api_url=kube_api.url,
        kubernetes_token_file=token,
        pod_deletion_cost_interval_s=0,
    )


async def test_the_pod_is_marked_busy_while_it_renders_and_idle_after(
    deployment: Deployment, kube_api: KubeApi, tmp_path: Path
) -> None:
    worker = deployment.worker
    spec = await deployment.submit("a red fox", seed=1, num_inference_steps=STEPS)
    expected_busy = deletion_cost(64 * 64 * STEPS / 1e6)  # the job's megapixel-steps

    async with pod_deletion_cost(
        in_pod(kube_api, tmp_path), worker.work_in_hand, worker.work_changed
    ):
        await deployment.run_until_settled([spec])
        await async_wait_for(
            lambda: _true(len(kube_api.patches) >= 3 and kube_api.patches[-1].cost == "0"),
            timeout_s=10,
            what="the pod marked idle again",
        )

    assert {p.path for p in kube_api.patches} == {f"/api/v1/namespaces/{NAMESPACE}/pods/{POD}"}
    assert {p.content_type for p in kube_api.patches} == {MERGE_PATCH}
    assert {p.authorization for p in kube_api.patches} == {f"Bearer {TOKEN}"}
    costs = [p.cost for p in kube_api.patches]
    assert costs == ["0", str(expected_busy), "0"]  # idle at start, busy, idle: transitions only
    busy = kube_api.patches[1]
    assert expected_busy >= 1 and busy.rendered_then == 0  # marked busy before the hand-off
    assert kube_api.patches[2].rendered_then == 1


async def test_an_api_server_that_refuses_does_not_stop_the_render(
    deployment: Deployment, kube_api: KubeApi, tmp_path: Path
) -> None:
    kube_api.status = 403  # no RoleBinding: patching pods is forbidden
    worker = deployment.worker
    spec = await deployment.submit("a blue whale", seed=2)
    async with pod_deletion_cost(
        in_pod(kube_api, tmp_path), worker.work_in_hand, worker.work_changed
    ):
        await deployment.run_until_settled([spec])
        # It keeps trying, at a gentle pace, and gets there once the API server allows it.
        await async_wait_for(
            lambda: _true(len(kube_api.patches) >= 2), timeout_s=10, what="a retry"
        )
        kube_api.status = 200
        await async_wait_for(
            lambda: _true(any(p.rendered_then for p in kube_api.patches[2:])),
            timeout_s=10,
            what="a patch accepted after the render",
        )
    assert [r.job_id for r in await deployment.rendered()] == [spec.job_id]
    assert kube_api.patches[-1].cost == "0"


def test_the_api_server_is_reached_over_https_or_loopback_only() -> None:
    with pytest.raises(ValidationError, match="https"):
        WorkerSettings(kubernetes_api_url="http://10.0.0.1:6443")
    settings = WorkerSettings(kubernetes_service_host="fd00::1", kubernetes_service_port=6443)
    assert settings.kubernetes_api == "https://[fd00::1]:6443"


async def _true(value: bool) -> bool:
    return value
