"""Both seed APIs end to end on a real uvicorn port, with local-directory storage."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest

from tests.support.client import png_bytes, png_size, read_feed, wait_terminal
from tests.support.stack import Stack
from tests.support.waiting import wait_for

SMALL = {"width": 128, "height": 96, "num_inference_steps": 3}


@pytest.fixture(scope="module")
def client(local_stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=local_stack.base_url, timeout=30) as http:
        yield http


def submit_t2i(client: httpx.Client, **params: object) -> str:
    response = client.post("/api/sd/t2i", json={"prompt": "a red fox in snow", **SMALL, **params})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "pending"
    assert body["message"] == "Task submitted. Use /api/{session_id}/status to check progress."
    return str(body["session_id"])


def test_health_reports_redis(client: httpx.Client) -> None:
    assert client.get("/").json() == {"status": "ok", "service": "darkroom", "redis": "connected"}


def test_t2i_completes_with_a_png_of_the_requested_size(
    client: httpx.Client, local_stack: Stack
) -> None:
    job_id = submit_t2i(client, seed=11)
    events = read_feed(client, f"/api/{job_id}/events")

    ids = [e.id for e in events]
    assert ids == sorted(set(ids)), "event ids strictly increase"
    progress = [e.data["progress"] for e in events]
    assert progress == sorted(progress), "progress never goes backwards"
    assert events[-1].data["status"] == "completed" and progress[-1] == 100
    assert any(re.fullmatch(r"Generating: step 3/3", e.data["message"]) for e in events)

    status = client.get(f"/api/{job_id}/status").json()
    assert set(status) == {"session_id", "status", "progress", "message", "result_url", "error"}
    assert status["status"] == "completed" and status["progress"] == 100 and status["error"] is None
    assert re.search(rf"/output/generations/\d{{8}}_\d{{6}}_{job_id}\.png$", status["result_url"])

    image = httpx.get(status["result_url"]).raise_for_status()
    assert image.headers["content-type"] == "image/png"
    assert png_size(image.content) == (128, 96)
    assert list((local_stack.workdir / "output" / "generations").glob(f"*_{job_id}.png"))


def test_i2i_multipart_keeps_the_input_size(client: httpx.Client) -> None:
    response = client.post(
        "/api/sd/i2i",
        files={"image": ("input.png", png_bytes(160, 120), "image/png")},
        data={
            "prompt": "Transform into a watercolor painting",
            "strength": "0.8",
            "guidance_scale": "7.5",
            "num_inference_steps": "4",
            "seed": "5",
        },
    )
    assert response.status_code == 200, response.text
    job_id = response.json()["session_id"]
    status = wait_terminal(client, f"/api/{job_id}/status")
    assert status["status"] == "completed", status
    assert png_size(httpx.get(status["result_url"]).content) == (160, 120)


def test_v1_generate_with_random_seed_records_the_seed(client: httpx.Client) -> None:
    response = client.post(
        "/v1/generate", json={"prompt": "a knight", "style_id": 4, "seed": -1, **SMALL}
    )
    assert response.status_code == 200, response.text
    assert set(response.json()) == {"job_id"}
    job_id = response.json()["job_id"]
    assert client.get(f"/v1/jobs/{job_id}").json()["status"] in {"PENDING", "STARTED", "SUCCESS"}

    events = read_feed(client, f"/v1/jobs/{job_id}/events")
    assert events[-1].data["status"] == "completed"
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "SUCCESS"
    assert isinstance(job["seed"], int) and 0 <= job["seed"] < 2**32
    (url,) = job["result_urls"]
    assert "/output/" in url
    assert png_size(httpx.get(url).content) == (128, 96)


def test_same_seed_gives_identical_bytes_and_another_seed_does_not(client: httpx.Client) -> None:
    def render(seed: int) -> bytes:
        status = wait_terminal(client, f"/api/{submit_t2i(client, seed=seed)}/status")
        return httpx.get(status["result_url"]).content

    first, again, other = render(42), render(42), render(43)
    assert first == again
    assert first != other


def test_reconnect_with_last_event_id_gets_exactly_the_missed_events(client: httpx.Client) -> None:
    job_id = submit_t2i(client, seed=3)
    wait_terminal(client, f"/api/{job_id}/status")
    # After the fact, a feed without Last-Event-ID is just the final state.
    (snapshot,) = read_feed(client, f"/api/{job_id}/events")
    assert snapshot.data["status"] == "completed"

    everything = read_feed(client, f"/api/{job_id}/events", last_event_id=0)
    assert [e.id for e in everything] == list(range(1, snapshot.id + 1))
    assert everything[0].data["status"] == "pending"
    resumed = read_feed(client, f"/api/{job_id}/events", last_event_id=3)
    assert resumed == everything[3:]
    # At the terminal event there is nothing more: a 204, so a browser stops reconnecting.
    assert read_feed(client, f"/api/{job_id}/events", last_event_id=snapshot.id) == []


def test_openapi_documents_every_route_and_the_docs_work_offline(client: httpx.Client) -> None:
    spec = client.get("/openapi.json").json()
    for path in (
        "/",
        "/api/{model}/t2i",
        "/api/{model}/i2i",
        "/api/{session_id}/status",
        "/api/{session_id}/events",
        "/v1/generate",
        "/v1/jobs/{job_id}",
        "/v1/jobs/{job_id}/events",
        "/v1/styles",
    ):
        assert path in spec["paths"], path
    sse = spec["paths"]["/api/{session_id}/events"]["get"]["responses"]["200"]["content"]
    assert sse["text/event-stream"]["schema"] == {"$ref": "#/components/schemas/JobEvent"}
    assert "JobEvent" in spec["components"]["schemas"]

    for page, asset in (("/docs", "swagger-ui-bundle.js"), ("/redoc", "redoc.standalone.js")):
        html = client.get(page).text
        (src,) = re.findall(rf'src="([^"]*{re.escape(asset)})"', html)
        assert not src.startswith("http"), "assets come from this server, not a CDN"
        script = client.get(src)
        assert script.status_code == 200 and len(script.content) > 100_000


def test_styles_are_listed(client: httpx.Client) -> None:
    styles = client.get("/v1/styles").json()
    assert {"id": 0, "name": "none", "prompt": "{prompt}", "negative_prompt": ""} in styles


def test_models_lists_each_route_and_whether_a_worker_has_it_loaded(client: httpx.Client) -> None:
    def sd_entry() -> dict[str, object] | None:
        entries = {m["name"]: m for m in client.get("/api/models").json()}
        return entries["sd"] if entries["sd"]["loaded"] else None

    sd = wait_for(sd_entry, timeout_s=60, what="a worker to report sd loaded")
    assert sd["family"] == "stable-diffusion" and sd["tasks"] == ["t2i", "i2i"]
    assert sd["served"] is True and sd["workers_loaded"] == 1
    assert sd["limits"]["size_multiple"] == 8 and sd["limits"]["max_width"] >= 1024
    assert sd["defaults"]["num_inference_steps"] == 50
