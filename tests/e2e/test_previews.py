"""Live previews end to end: ``preview: true`` on a submit, a real worker rendering tiny
checkpoints, and the job's raw SSE feed read as a browser would receive it."""

from __future__ import annotations

import asyncio
import base64
import io
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from redis.asyncio import Redis

from common.keys import Keys
from common.previews import PREVIEW_TTL_S
from common.redis_server import RedisServer
from tests.conftest import _stack
from tests.support.stack import Stack

FEED_TIMEOUT_S = 180.0
# Every denoising step takes this much longer (a test aid of the worker), so that a tiny render
# lasts long enough for several previews, at most one per 0.5 s.
STEP_DELAY_S = 0.05


@pytest.fixture(scope="module")
def stack(
    redis_server: RedisServer, models_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    stack = _stack(
        "previews",
        ("worker", "uploader", "gateway"),
        redis_server,
        models_file,
        tmp_path_factory,
        extra={
            "DARKROOM_ROUTES": "sd,ltx",
            "DARKROOM_TEST_STEP_DELAY_S": str(STEP_DELAY_S),
            # Ready at once; each route loads on its first job (the feeds wait for it).
            "DARKROOM_PRELOAD": "false",
        },
    )
    yield stack
    stack.stop_all()


@pytest.fixture
async def client(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=30) as http:
        yield http


@dataclass
class Frame:
    """One SSE frame as sent: its fields, raw."""

    event: str = "message"
    id: str | None = None
    data: str = ""

    def json(self) -> Any:
        return json.loads(self.data)


@dataclass
class Feed:
    frames: list[Frame] = field(default_factory=list)

    @property
    def previews(self) -> list[Frame]:
        return [f for f in self.frames if f.event == "preview"]

    @property
    def messages(self) -> list[Frame]:
        return [f for f in self.frames if f.event == "message" and f.data]


async def read_raw_feed(
    client: httpx.AsyncClient,
    path: str,
    feed: Feed,
    *,
    headers: dict[str, str] | None = None,
    until: Any = None,
) -> None:
    """Parse the ``text/event-stream`` body by hand, until the server ends it (or ``until``
    returns true of the frames so far)."""
    async with client.stream("GET", path, headers=headers, timeout=FEED_TIMEOUT_S) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        frame = Frame()
        async for line in response.aiter_lines():
            if line == "":
                if frame.data or frame.event != "message":
                    feed.frames.append(frame)
                    if until is not None and until(feed):
                        return
                frame = Frame()
            elif line.startswith(":"):
                continue  # a ping
            else:
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if name == "event":
                    frame.event = value
                elif name == "id":
                    frame.id = value
                elif name == "data":
                    frame.data += value


def decode(preview: Frame) -> tuple[dict[str, Any], Image.Image]:
    body = preview.json()
    prefix, _, b64 = body["image"].partition(",")
    assert prefix == "data:image/jpeg;base64"
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    image.load()
    assert image.format == "JPEG"
    return body, image


async def submit(client: httpx.AsyncClient, route: str, task: str, body: dict[str, Any]) -> str:
    response = await client.post(f"/api/{route}/{task}", json={"cache": False} | body)
    assert response.status_code == 200, response.text
    job_id: str = response.json()["session_id"]
    return job_id


def sd_job(steps: int, **extra: Any) -> dict[str, Any]:
    return {
        "prompt": "a lighthouse at dusk",
        "width": 512,
        "height": 384,
        "num_inference_steps": steps,
        "guidance_scale": 7.5,
        "seed": 11,
    } | extra


async def test_previews_stream_on_the_feed_of_a_job_that_asked_and_only_that_one(
    client: httpx.AsyncClient,
) -> None:
    # Submitted together, the two may share one pipeline call: the previews are one job's slice.
    with_previews = await submit(client, "sd", "t2i", sd_job(40, preview=True))
    without = await submit(client, "sd", "t2i", sd_job(40, seed=12))
    feeds = {with_previews: Feed(), without: Feed()}
    await asyncio.gather(
        *(read_raw_feed(client, f"/api/{job}/events", feed) for job, feed in feeds.items())
    )

    seen = feeds[with_previews]
    assert seen.messages[-1].json()["status"] == "completed"
    assert len(seen.previews) > 1
    steps = []
    for frame in seen.previews:
        assert frame.id is None  # never moves Last-Event-ID
        body, image = decode(frame)
        assert set(body) == {"step", "total_steps", "image"}
        assert body["total_steps"] == 40 and 1 <= body["step"] <= 40
        assert image.size == (256, 192)  # longest side 256, the render's 4:3
        steps.append(body["step"])
    assert steps == sorted(steps) and len(set(steps)) == len(steps)
    # The plain events are untouched: consecutive ids, as before previews existed.
    ids = [int(f.id) for f in seen.messages if f.id is not None]
    assert ids == list(range(ids[0], ids[0] + len(ids)))

    assert feeds[without].previews == []
    assert feeds[without].messages[-1].json()["status"] == "completed"


async def test_a_feed_opened_mid_render_gets_the_latest_preview_at_once(
    client: httpx.AsyncClient, redis: Redis, stack: Stack
) -> None:
    job_id = await submit(client, "sd", "t2i", sd_job(80, preview=True))
    first = Feed()
    # Watch until the first preview, then hang up, as a page that is closed mid-render.
    await read_raw_feed(client, f"/api/{job_id}/events", first, until=lambda f: f.previews)
    seen_step = first.previews[0].json()["step"]
    last_id = [f.id for f in first.messages if f.id is not None][-1]
    key = Keys(stack.prefix).preview(job_id)
    assert 0 < await redis.ttl(key) <= PREVIEW_TTL_S  # the latest only, and it expires

    for headers in ({}, {"Last-Event-ID": last_id}):  # opened afresh, and resumed
        again = Feed()
        await read_raw_feed(
            client, f"/api/{job_id}/events", again, headers=headers, until=lambda f: f.previews
        )
        # At once: right after the snapshot and the events missed (a few more of those on a
        # loaded machine), not after the next live one half a second of steps later.
        assert all(
            f.event == "message" for f in again.frames[: again.frames.index(again.previews[0])]
        )
        assert again.frames.index(again.previews[0]) <= 6
        progress = [f.json() for f in again.messages]
        assert all(p["status"] == "processing" for p in progress)
        assert again.previews[0].json()["step"] >= seen_step
        decode(again.previews[0])

    rest = Feed()
    await read_raw_feed(client, f"/v1/jobs/{job_id}/events", rest)  # seed 2's feed too
    assert rest.messages[-1].json()["status"] == "completed"
    assert rest.previews  # the latest, then live ones
    # The render is over: no preview is left in Redis, and a resume sends none.
    assert await redis.exists(key) == 0


async def test_a_video_job_previews_its_first_frame(client: httpx.AsyncClient) -> None:
    job_id = await submit(
        client,
        "ltx",
        "t2v",
        {
            "prompt": "waves",
            "width": 512,
            "height": 320,
            "num_frames": 9,
            "num_inference_steps": 4,
            "seed": 3,
            "preview": True,
        },
    )
    feed = Feed()
    await read_raw_feed(client, f"/api/{job_id}/events", feed)
    assert feed.messages[-1].json()["status"] == "completed"
    assert feed.previews
    for frame in feed.previews:
        body, image = decode(frame)
        assert body["total_steps"] == 4
        assert image.size == (256, 160)  # one frame, the video's 8:5


async def test_preview_must_be_a_boolean(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/generate", json={"prompt": "x", "preview": "sometimes"})
    assert response.status_code == 422
    assert response.json()["fields"][0]["field"] == "preview"
