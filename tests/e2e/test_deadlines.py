"""The Cancel-After header: a job not done in time fails with "deadline exceeded"."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.support.client import read_feed, wait_terminal
from tests.support.ledger import Ledger
from tests.support.stack import Stack

# Many short steps: the first lands well inside the deadline, the last well past it.
LONG = {"prompt": "a long render", "width": 1024, "height": 1024, "num_inference_steps": 150}


@pytest.fixture(scope="module")
def client(local_stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=local_stack.base_url, timeout=30) as http:
        yield http


def test_a_running_job_past_its_deadline_stops_and_fails(
    client: httpx.Client, ledger: Ledger
) -> None:
    response = client.post("/api/sd/t2i", json=LONG, headers={"Cancel-After": "3"})
    job_id = response.raise_for_status().json()["session_id"]
    events = read_feed(client, f"/api/{job_id}/events", last_event_id=0, timeout_s=120)
    final = events[-1].data
    ledger.fault("deadline passes mid-render")
    ledger.submitted += 1
    ledger.failed_as_intended += final["error"] == "deadline exceeded"
    assert (final["status"], final["error"]) == ("failed", "deadline exceeded")
    assert any("step" in e.data["message"] for e in events)  # it had started rendering
    assert final["result_urls"] == []


def test_a_generous_deadline_changes_nothing(client: httpx.Client) -> None:
    response = client.post(
        "/v1/generate",
        json={"prompt": "quick", "width": 64, "height": 64, "num_inference_steps": 2},
        headers={"Cancel-After": "600"},
    )
    job = wait_terminal(client, f"/v1/jobs/{response.raise_for_status().json()['job_id']}")
    assert job["status"] == "SUCCESS"


@pytest.mark.parametrize("value", ["soon", "0", "-5", "99999999"])
def test_a_bad_cancel_after_is_refused(client: httpx.Client, value: str) -> None:
    response = client.post("/api/sd/t2i", json=LONG, headers={"Cancel-After": value})
    assert response.status_code == 422
    assert response.json()["fields"][0]["field"] == "Cancel-After"
