"""``GET /v1/usage`` on a live stack (gateway, worker, uploader) with API keys: what a tenant's
jobs took, as the tenant and an admin read it, matches what ran: job counts by route and
outcome, the worker's measured render time, the bytes stored, the cost. With auth off, usage is
the tenant ``local``'s."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from common.cost import job_cost
from common.redis_server import RedisServer, free_port
from common.schemas import RenderParams, Task
from tests.conftest import _stack
from tests.support.client import wait_terminal
from tests.support.keys import create_key
from tests.support.stack import Stack
from tests.support.waiting import wait_for

SMALL = {"prompt": "a small one", "width": 64, "height": 64, "num_inference_steps": 2}
GENERATE = {"prompt": "a harbour", "width": 96, "height": 64, "num_inference_steps": 3}
# Slow enough on the tiny checkpoint to be caught mid-render.
LONG = {"prompt": "a long render", "width": 2048, "height": 2048, "num_inference_steps": 150}


@pytest.fixture(scope="module")
def usage_stack(
    redis_server: RedisServer, models_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    stack = _stack(
        "usage",
        ("uploader", "gateway"),
        redis_server,
        models_file,
        tmp_path_factory,
        {"DARKROOM_AUTH": "keys"},
    )
    metrics_port = free_port()
    # The worker's own measure of its render time, to compare the usage with.
    stack.start("worker", env={"DARKROOM_HEALTH_PORT": str(metrics_port)})
    stack.env["TEST_METRICS_URL"] = f"http://127.0.0.1:{metrics_port}/metrics"
    yield stack
    stack.stop_all()


@pytest.fixture(scope="module")
def admin_key(usage_stack: Stack) -> str:
    return create_key(usage_stack, f"root-{uuid.uuid4().hex[:8]}", admin=True)


def new_tenant(stack: Stack) -> tuple[str, httpx.Client]:
    name = f"t-{uuid.uuid4().hex[:10]}"
    key = create_key(stack, name)
    headers = {"Authorization": f"Bearer {key}"}
    return name, httpx.Client(base_url=stack.base_url, headers=headers, timeout=30)


def rendered_s(stack: Stack) -> float:
    """``darkroom_pipeline_seconds_total``: every second the worker spent in pipeline calls."""
    text = httpx.get(stack.env["TEST_METRICS_URL"]).text
    return sum(
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith("darkroom_pipeline_seconds_total{")
    )


def today() -> str:
    return datetime.now(UTC).date().isoformat()


def usage(client: httpx.Client, **params: str) -> dict[str, Any]:
    answer = client.get("/v1/usage", params=params)
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def counts(report: dict[str, Any]) -> dict[tuple[str, str], tuple[int, int, int]]:
    return {
        (r["model"], r["task"]): (r["completed"], r["failed"], r["canceled"])
        for r in report["total"]["jobs"]
    }


def submit(client: httpx.Client, body: dict[str, Any], **headers: str) -> str:
    answer = client.post("/api/sd/t2i", json=body, headers=headers)
    return str(answer.raise_for_status().json()["session_id"])


def test_usage_after_a_few_jobs_matches_what_ran(usage_stack: Stack) -> None:
    _, alice = new_tenant(usage_stack)
    before_s = rendered_s(usage_stack)

    # Canceled mid-render: counted, and paid for the steps it rendered before the worker
    # stopped it, which is less than the time it was in the system.
    began = time.monotonic()
    long_id = submit(alice, LONG)
    wait_for(
        lambda: "step" in alice.get(f"/api/{long_id}/status").json()["message"],
        timeout_s=120,
        what="the long render to start",
    )
    assert alice.delete(f"/api/{long_id}").json()["status"] == "canceled"
    charged = wait_for(
        lambda: usage(alice)["total"]["gpu_s"], timeout_s=60, what="the canceled render's charge"
    )
    assert 0 < charged < time.monotonic() - began
    assert counts(usage(alice)) == {("sd", "t2i"): (0, 0, 1)}

    # Completed through both seed APIs, and one failed before it rendered.
    ids = [submit(alice, SMALL), submit(alice, SMALL | {"width": 128})]
    generated = alice.post("/v1/generate", json=GENERATE).raise_for_status().json()["job_id"]
    late_id = submit(alice, SMALL, **{"Cancel-After": "0.001"})
    results = [wait_terminal(alice, f"/api/{job_id}/status") for job_id in ids + [late_id]]
    results.append(wait_terminal(alice, f"/v1/jobs/{generated}"))
    assert [r["status"] for r in results] == ["completed", "completed", "failed", "SUCCESS"]
    ran_s = rendered_s(usage_stack) - before_s

    report = usage(alice)
    assert (report["from"], report["to"]) == (
        (datetime.now(UTC).date() - timedelta(days=29)).isoformat(),
        today(),
    )
    assert counts(report) == {("sd", "t2i"): (3, 1, 1)}
    assert [day["date"] for day in report["days"]] == [today()]
    # GPU-seconds: the worker's render time, every second of it and nothing more.
    assert report["total"]["gpu_s"] == pytest.approx(ran_s, rel=0.05)
    # Output bytes: exactly what storage holds for the completed jobs.
    urls = [results[0]["result_url"], results[1]["result_url"], *results[3]["result_urls"]]
    stored = sum(len(httpx.get(url).raise_for_status().content) for url in urls)
    assert report["total"]["output_bytes"] == stored
    # Cost: the completed jobs' megapixel-steps.
    costs = [
        job_cost(RenderParams.model_validate(body | {"guidance_scale": 7.5, "seed": 0}), Task.T2I)
        for body in (SMALL, SMALL | {"width": 128}, GENERATE)
    ]
    assert report["total"]["cost_megapixel_steps"] == pytest.approx(sum(costs))
    alice.close()


def test_a_key_reads_its_own_usage_and_only_an_admin_reads_another_tenants(
    usage_stack: Stack, admin_key: str
) -> None:
    alice_name, alice = new_tenant(usage_stack)
    bob_name, bob = new_tenant(usage_stack)
    admin = httpx.Client(
        base_url=usage_stack.base_url, headers={"X-API-Key": admin_key}, timeout=30
    )
    assert wait_terminal(alice, f"/api/{submit(alice, SMALL)}/status")["status"] == "completed"

    own = usage(alice)
    assert own["tenant"] == alice_name and counts(own) == {("sd", "t2i"): (1, 0, 0)}
    assert usage(alice, tenant=alice_name) == own
    assert usage(admin, tenant=alice_name) == own
    # Bob sees his own (nothing yet), never Alice's.
    nothing = usage(bob)
    assert (nothing["tenant"], nothing["days"], counts(nothing)) == (bob_name, [], {})
    refused = bob.get("/v1/usage", params={"tenant": alice_name})
    assert (refused.status_code, refused.json()["error"]) == (403, "forbidden")
    assert httpx.get(usage_stack.base_url + "/v1/usage").status_code == 401

    ranged = usage(alice, **{"from": "2024-02-28", "to": "2024-03-01"})
    assert (ranged["from"], ranged["to"], ranged["days"]) == ("2024-02-28", "2024-03-01", [])
    assert usage(alice, **{"from": today()})["total"] == own["total"]
    for params in (
        {"from": "2024-02-30"},
        {"from": "1700000000"},
        {"from": "2024-03-02", "to": "2024-03-01"},
        {"from": "2020-01-01", "to": "2024-01-01"},  # past the retention
        {"tenant": "Not:A:Name"},
        {"form": "2024-03-01"},
    ):
        answer = admin.get("/v1/usage", params=params)
        assert answer.status_code == 422, (params, answer.text)
        assert answer.json()["error"] == "invalid_request" and answer.json()["fields"], params

    document = httpx.get(usage_stack.base_url + "/openapi.json").json()
    operation = document["paths"]["/v1/usage"]["get"]
    assert [p["name"] for p in operation["parameters"]] == ["from", "to", "tenant"]
    assert {"200", "401", "403", "422"} <= set(operation["responses"])
    for client in (alice, bob, admin):
        client.close()


def test_with_auth_off_usage_is_the_local_tenants(local_stack: Stack) -> None:
    with httpx.Client(base_url=local_stack.base_url, timeout=30) as client:
        before = counts(usage(client)).get(("sd", "t2i"), (0, 0, 0))
        job_id = submit(client, SMALL)
        assert wait_terminal(client, f"/api/{job_id}/status")["status"] == "completed"
        report = usage(client)
        assert report["tenant"] == "local"
        assert counts(report)[("sd", "t2i")] == (before[0] + 1, before[1], before[2])
        assert usage(client, tenant="local") == report
        assert client.get("/v1/usage", params={"tenant": "someone"}).status_code == 403
