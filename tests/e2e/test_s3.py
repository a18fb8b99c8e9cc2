"""The whole path with S3 storage: results land in a real S3 server under the seed's keys."""

from __future__ import annotations

import re

import httpx

from tests.support.client import png_bytes, png_size, read_feed, wait_terminal
from tests.support.s3_server import S3Server
from tests.support.stack import Stack

BUCKET = "darkroom-e2e"


def test_t2i_result_is_stored_in_s3_under_the_seed_key(
    s3_stack: Stack, s3_server: S3Server
) -> None:
    with httpx.Client(base_url=s3_stack.base_url, timeout=30) as client:
        # sdxl: a route no other test of this shared stack renders, so its first job here is
        # the one that waits for the model to load.
        response = client.post(
            "/api/sdxl/t2i",
            json={
                "prompt": "a harbour at dawn",
                "width": 96,
                "height": 64,
                "num_inference_steps": 2,
            },
        )
        job_id = response.raise_for_status().json()["session_id"]
        events = read_feed(client, f"/api/{job_id}/events", last_event_id=0)
        assert events[-1].data["status"] == "completed"
        # This stack's worker loads on first use: the first job says what it waits for.
        assert "Loading model" in [e.data["message"] for e in events]
        status = client.get(f"/api/{job_id}/status").json()

    url = status["result_url"]
    assert url.startswith(s3_server.endpoint_url) and "X-Amz-Signature" in url  # presigned
    fetched = httpx.get(url).raise_for_status()
    assert png_size(fetched.content) == (96, 64)

    objects = s3_server.client().list_objects_v2(Bucket=BUCKET)["Contents"]
    (key,) = [o["Key"] for o in objects if job_id in o["Key"]]
    assert re.fullmatch(rf"generations/\d{{8}}_\d{{6}}_{job_id}\.png", key)
    stored = s3_server.client().get_object(Bucket=BUCKET, Key=key)
    assert stored["ContentType"] == "image/png"
    assert stored["Body"].read() == fetched.content


def test_v1_and_i2i_through_s3(s3_stack: Stack) -> None:
    with httpx.Client(base_url=s3_stack.base_url, timeout=30) as client:
        v1 = client.post(
            "/v1/generate",
            json={
                "prompt": "a shield",
                "style_id": 4,
                "width": 64,
                "height": 64,
                "num_inference_steps": 2,
            },
        )
        i2i = client.post(
            "/api/sd/i2i",
            files={"image": ("in.png", png_bytes(96, 96), "image/png")},
            data={"num_inference_steps": "2", "strength": "0.5"},
        )
        job = wait_terminal(client, f"/v1/jobs/{v1.raise_for_status().json()['job_id']}")
        session = wait_terminal(
            client, f"/api/{i2i.raise_for_status().json()['session_id']}/status"
        )
    assert job["status"] == "SUCCESS" and session["status"] == "completed"
    assert png_size(httpx.get(job["result_urls"][0]).content) == (64, 64)
    assert png_size(httpx.get(session["result_url"]).content) == (96, 96)
