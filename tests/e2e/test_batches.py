"""Batches rendered by a real worker on the tiny checkpoints: they complete with per-job and
aggregate status, their feed follows them to the end, the jobs render together, and cancel
stops what has not finished."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from tests.support.client import read_feed, wait_terminal
from tests.support.stack import Stack
from tests.support.waiting import wait_for

SHORT = {"prompt": "a quick one", "width": 64, "height": 64, "num_inference_steps": 2}
# Slow enough on the tiny checkpoint to be caught mid-render.
LONG = {"prompt": "a long render", "width": 2048, "height": 2048, "num_inference_steps": 150}


@pytest.fixture(scope="module")
def client(local_stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=local_stack.base_url, timeout=30) as http:
        yield http


def rendered_batch_sizes(stack: Stack, job_ids: list[str]) -> list[int]:
    """The size of the pipeline call each of these jobs rendered in (the worker's log)."""
    sizes = []
    for line in stack.log("worker").splitlines():
        if '"job.rendered"' in line:
            entry = json.loads(line)
            if entry.get("job_id") in job_ids:
                sizes.append(int(entry["batch"]))
    return sizes


def test_a_batch_completes_and_its_feed_follows_it_to_the_end(
    client: httpx.Client, local_stack: Stack
) -> None:
    body = {"requests": [{**SHORT, "prompt": f"lighthouse {i}", "seed": i} for i in range(4)]}
    submitted = client.post("/api/sd/batch", json=body).raise_for_status().json()
    batch_id, job_ids = submitted["batch_id"], submitted["session_ids"]
    assert len(job_ids) == 4

    events = read_feed(client, f"/api/batches/{batch_id}/events")
    ids = [event.id for event in events]
    assert ids == sorted(set(ids)), ids  # every snapshot newer than the one before
    last = events[-1].data
    assert last["status"] == "completed" and last["progress"] == 100
    assert last["counts"]["completed"] == 4 and last["total"] == 4
    assert [job["session_id"] for job in last["jobs"]] == job_ids
    assert all(job["result_url"].endswith(".png") for job in last["jobs"])

    status = client.get(f"/api/batches/{batch_id}").json()
    assert status == last
    for job in last["jobs"]:  # each is an ordinary job too
        own = client.get(f"/api/{job['session_id']}/status").json()
        assert own["status"] == "completed" and own["result_url"] == job["result_url"]
    # A resume at the last event: nothing more will come.
    assert read_feed(client, f"/api/batches/{batch_id}/events", last_event_id=ids[-1]) == []
    # Queued together, rendered together.
    assert max(rendered_batch_sizes(local_stack, job_ids)) > 1


def test_seed_two_batches_report_seed_two_names(client: httpx.Client) -> None:
    body = {"requests": [{**SHORT, "style_id": 1, "seed": 7}, {**SHORT, "seed": -1}]}
    submitted = client.post("/v1/batches", json=body).raise_for_status().json()
    batch_id, job_ids = submitted["batch_id"], submitted["job_ids"]
    done = wait_terminal(client, f"/v1/batches/{batch_id}")
    assert done["status"] == "SUCCESS" and done["counts"]["SUCCESS"] == 2
    assert [job["job_id"] for job in done["jobs"]] == job_ids
    assert done["jobs"][0]["seed"] == 7 and done["jobs"][1]["seed"] >= 0
    for job in done["jobs"]:
        assert job["status"] == "SUCCESS" and job["result_urls"]
        assert client.get(f"/v1/jobs/{job['job_id']}").json()["result_urls"] == job["result_urls"]


def test_cancel_stops_the_rest_of_a_running_batch(client: httpx.Client) -> None:
    body = {"requests": [SHORT, LONG, LONG]}
    submitted = client.post("/api/sd/batch", json=body).raise_for_status().json()
    batch_id, (first, second, third) = submitted["batch_id"], submitted["session_ids"]

    def second_rendering() -> bool:
        return "step" in client.get(f"/api/{second}/status").json()["message"]

    wait_for(second_rendering, timeout_s=120, what="the batch's second job to render")
    # Its upload may still be under way as the next render starts.
    assert wait_terminal(client, f"/api/{first}/status")["status"] == "completed"
    answer = client.delete(f"/api/batches/{batch_id}")
    assert answer.status_code == 200, answer.text
    after = answer.json()
    assert after["status"] == "partial"
    assert (after["counts"]["completed"], after["counts"]["canceled"]) == (1, 2)

    events = read_feed(client, f"/api/batches/{batch_id}/events")
    assert events[-1].data["status"] == "partial"
    assert [job["status"] for job in events[-1].data["jobs"]] == [
        "completed",
        "canceled",
        "canceled",
    ]
    for job_id in (second, third):
        assert wait_terminal(client, f"/api/{job_id}/status")["result_url"] is None
