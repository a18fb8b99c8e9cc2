"""The Python client against a live stack (tiny worker, real S3): every route and task, its feed
across a cut connection, submits retried without a second job, typed errors."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from darkroom_client import (
    AsyncClient,
    BadRequest,
    Client,
    Conflict,
    JobCanceled,
    JobEvent,
    NotFound,
)
from tests.support.client import png_bytes, png_size
from tests.support.s3_server import S3Server
from tests.support.stack import Stack
from tests.support.tcp_proxy import BreakingProxy

SMALL = {"width": 64, "height": 64, "num_inference_steps": 2}
# Slow enough on the tiny checkpoint to be caught mid-render.
LONG = {"width": 2048, "height": 2048, "num_inference_steps": 150}


@pytest.fixture(scope="module")
def client(s3_stack: Stack) -> Iterator[Client]:
    with Client(s3_stack.base_url) as darkroom:
        yield darkroom


def _key(head: str) -> str:
    found = re.search(r"(?im)^idempotency-key: *(\S+)", head)
    assert found, head
    return found[1]


def test_submit_watch_wait_and_download_from_s3(
    client: Client, s3_server: S3Server, tmp_path: Path
) -> None:
    job = client.submit("sd", "a harbour at dawn", width=96, height=64, num_inference_steps=3)
    # From the first event (without last_event_id the feed starts at the job's state now).
    events = [e for e in client.watch(job.id, last_event_id=0) if isinstance(e, JobEvent)]
    assert events[0].status == "pending" and events[-1].status == "completed"
    assert [e.seq for e in events] == sorted({e.seq for e in events})  # in order, no repeat

    state = client.wait(job.id)
    assert state.result_urls[0].startswith(s3_server.endpoint_url)  # presigned S3 URL
    (path,) = client.download(state, tmp_path / "out")
    assert path.parent == tmp_path / "out" and job.id in path.name and path.suffix == ".png"
    assert png_size(path.read_bytes()) == (96, 64)


def test_every_route_and_task(client: Client, tmp_path: Path) -> None:
    image = tmp_path / "in.png"
    image.write_bytes(png_bytes(96, 64))
    jobs = {
        "i2i": client.image_to_image(
            "sd", image, "a watercolour", strength=0.5, num_inference_steps=2
        ),
        "t2v": client.text_to_video(
            "ltx", "waves", width=64, height=64, num_frames=9, num_inference_steps=2
        ),
        "i2v": client.image_to_video(
            "ltx", png_bytes(64, 64), "push in", num_frames=9, num_inference_steps=2
        ),
        "multi-angle": client.multi_angle(
            "qwen-multi-angle", "a red armchair", ["front", "top-down"], **SMALL
        ),
        "v1": client.generate("a shield", style_id=4, **SMALL),
    }
    assert jobs["v1"].api == "v1"
    results = {task: client.wait(job.id).result_urls for task, job in jobs.items()}
    assert [len(urls) for urls in results.values()] == [1, 1, 1, 2, 1]
    assert results["t2v"][0].split("?")[0].endswith(".mp4")
    assert results["i2v"][0].split("?")[0].endswith(".mp4")
    saved = client.download(client.status(jobs["multi-angle"].id), tmp_path)
    assert [png_size(p.read_bytes()) for p in saved] == [(64, 64), (64, 64)]
    assert png_size(client.download(jobs["i2i"].id, tmp_path)[0].read_bytes()) == (96, 64)


def test_batches_seed_1_and_seed_2(client: Client) -> None:
    batch = client.submit_batch("sd", [{"prompt": f"lighthouse {i}", **SMALL} for i in range(2)])
    states = list(client.watch_batch(batch.id))
    assert states[-1].status == "completed" and states[-1].counts["completed"] == 2
    assert [j.id for j in client.batch(batch.id).jobs] == batch.job_ids

    v1 = client.submit_batch(None, [{"prompt": "a knight", **SMALL}])
    assert v1.api == "v1" and len(v1.job_ids) == 1
    assert client.wait(v1.job_ids[0]).status == "completed"


def test_feed_resumes_after_a_cut_connection_without_losing_or_repeating_events(
    s3_stack: Stack,
) -> None:
    with BreakingProxy(s3_stack.base_url) as proxy, Client(proxy.base_url) as client:
        job = client.submit("sd", "a long one", width=128, height=128, num_inference_steps=20)
        events: list[JobEvent] = []
        for event in client.watch(job.id):
            if isinstance(event, JobEvent):
                events.append(event)
                if len(events) == 1:
                    proxy.drop_connections()
        feeds = [h for h in proxy.requests if f"/api/{job.id}/events" in h]

    assert len(feeds) >= 2  # the first was cut, then resumed
    assert re.search(r"(?im)^last-event-id: *\d+", feeds[-1])
    seqs = [e.seq for e in events]
    assert seqs == list(range(seqs[0], seqs[-1] + 1))  # every event once, in order
    assert events[-1].status == "completed"


def test_submit_whose_answer_was_lost_is_retried_and_queued_once(s3_stack: Stack) -> None:
    with BreakingProxy(s3_stack.base_url) as proxy, Client(proxy.base_url) as client:
        proxy.drop_next_response("POST")
        job = client.submit("sd", "only once", **SMALL)
        (lost,) = proxy.dropped
        first = json.loads(lost.partition(b"\r\n\r\n")[2])["session_id"]
        posts = [h for h in proxy.requests if h.startswith("POST")]

        assert job.id == first and job.replayed  # the server made one job and said so again
        assert len(posts) == 2 and _key(posts[0]) == _key(posts[1])
        assert client.wait(job.id).status == "completed"


def test_submit_refused_with_503_is_retried_with_the_same_key(s3_stack: Stack) -> None:
    with BreakingProxy(s3_stack.base_url) as proxy, Client(proxy.base_url) as client:
        proxy.refuse_next("POST", 503, retry_after_s=1)
        job = client.generate("not now, then now", **SMALL)
        posts = [h for h in proxy.requests if h.startswith("POST")]
        assert len(posts) == 2 and _key(posts[0]) == _key(posts[1])
        assert not job.replayed  # the refused try never reached the server
        assert client.wait(job.id).status == "completed"


def test_server_errors_are_typed_and_carry_the_json(client: Client) -> None:
    with pytest.raises(NotFound) as unknown:
        client.submit("no-such-model", "x")
    assert unknown.value.code == "unknown_model" and "no-such-model" in unknown.value.message

    with pytest.raises(BadRequest) as bad:
        client.submit("sd", "x", height=100)
    assert bad.value.status_code == 422
    assert bad.value.fields == [{"field": "height", "message": "100 is not a multiple of 8"}]

    with pytest.raises(ValueError, match="needs an image"):
        client.submit("sd", "x", task="i2i")


async def test_async_client_runs_and_cancels(s3_stack: Stack, tmp_path: Path) -> None:
    async with AsyncClient(s3_stack.base_url) as client:
        job = await client.submit("sd", "async", **SMALL)
        kinds = [type(e).__name__ async for e in client.watch(job.id)]
        assert kinds[-1] == "JobEvent"
        (path,) = await client.download(await client.wait(job.id), tmp_path)
        assert png_size(path.read_bytes()) == (64, 64)

        long = await client.submit("sd", "too long", **LONG)
        async for event in client.watch(long.id):
            if isinstance(event, JobEvent) and event.status == "processing":
                await client.cancel(long.id)
        with pytest.raises(JobCanceled) as canceled:
            await client.wait(long.id)
        assert canceled.value.state.status == "canceled"
        with pytest.raises(Conflict):
            await client.cancel(long.id)  # it has ended
