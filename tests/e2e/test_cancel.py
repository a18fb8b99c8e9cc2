"""Canceling queued and running jobs through both seed APIs."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.support.client import read_feed, wait_terminal
from tests.support.ledger import Ledger
from tests.support.stack import Stack
from tests.support.waiting import wait_for

# Slow enough on the tiny checkpoint to be caught mid-render.
LONG = {"prompt": "a long render", "width": 2048, "height": 2048, "num_inference_steps": 150}
SHORT = {"prompt": "a quick one", "width": 64, "height": 64, "num_inference_steps": 2}


@pytest.fixture(scope="module")
def client(local_stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=local_stack.base_url, timeout=30) as http:
        yield http


def submit(client: httpx.Client, body: dict[str, object]) -> str:
    return str(client.post("/api/sd/t2i", json=body).raise_for_status().json()["session_id"])


def rendering(client: httpx.Client, job_id: str) -> bool:
    return "step" in client.get(f"/api/{job_id}/status").json()["message"]


def test_cancel_a_running_job_stops_it_and_the_worker_moves_on(
    client: httpx.Client, local_stack: Stack, ledger: Ledger
) -> None:
    job_id = submit(client, LONG)
    wait_for(lambda: rendering(client, job_id), timeout_s=120, what="the render to start")
    response = client.delete(f"/api/{job_id}")
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "canceled"

    events = read_feed(client, f"/api/{job_id}/events", last_event_id=0)
    ledger.fault("cancel a running job")
    ledger.submitted += 1
    ledger.failed_as_intended += events[-1].data["status"] == "canceled"
    assert events[-1].data["status"] == "canceled"
    assert client.delete(f"/api/{job_id}").status_code == 409  # already finished

    # The worker abandons the render at its next step and takes the next job.
    next_job = wait_terminal(client, f"/api/{submit(client, SHORT)}/status", timeout_s=60)
    assert next_job["status"] == "completed"
    status = client.get(f"/api/{job_id}/status").json()
    assert status["status"] == "canceled" and status["result_url"] is None
    assert not list((local_stack.workdir / "output" / "generations").glob(f"*{job_id}*"))


def test_cancel_a_queued_job_through_v1_means_it_never_renders(
    client: httpx.Client, ledger: Ledger
) -> None:
    blocker = submit(client, LONG)
    wait_for(lambda: rendering(client, blocker), timeout_s=120, what="the blocker to render")
    queued = client.post("/v1/generate", json=SHORT).raise_for_status().json()["job_id"]
    response = client.post(f"/v1/jobs/{queued}/cancel")
    assert response.status_code == 200
    assert response.json()["status"] == "REVOKED"
    client.delete(f"/api/{blocker}")

    events = read_feed(client, f"/v1/jobs/{queued}/events", last_event_id=0)
    ledger.fault("cancel a queued job")
    ledger.submitted += 1
    ledger.failed_as_intended += [e.data["status"] for e in events] == ["pending", "canceled"]
    assert [e.data["status"] for e in events] == ["pending", "canceled"]
    assert client.get(f"/v1/jobs/{queued}").json()["status"] == "REVOKED"


def test_cancel_unknown_job_is_404(client: httpx.Client) -> None:
    assert client.delete("/api/no-such-job").status_code == 404
    assert client.post("/v1/jobs/no-such-job/cancel").status_code == 404
