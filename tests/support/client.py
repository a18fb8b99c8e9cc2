"""Small HTTP helpers the end-to-end tests share: submit, wait, read an SSE feed, inspect a PNG."""

from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass
from random import Random
from typing import Any

import httpx
from httpx_sse import connect_sse
from PIL import Image

TERMINAL = {"completed", "failed", "canceled", "SUCCESS", "FAILURE", "REVOKED"}
JOB_TIMEOUT_S = 180.0


@dataclass(frozen=True)
class FeedEvent:
    id: int
    data: dict[str, Any]


def wait_terminal(
    client: httpx.Client, path: str, *, timeout_s: float = JOB_TIMEOUT_S
) -> dict[str, Any]:
    """Poll a status path until the job is finished; returns the last body."""
    deadline = time.monotonic() + timeout_s
    while True:
        body: dict[str, Any] = client.get(path).raise_for_status().json()
        if body["status"] in TERMINAL:
            return body
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} still {body['status']} after {timeout_s}s")
        time.sleep(0.1)


def read_feed(
    client: httpx.Client,
    path: str,
    *,
    last_event_id: int | None = None,
    timeout_s: float = JOB_TIMEOUT_S,
) -> list[FeedEvent]:
    """Every event of an SSE feed until the server ends it."""
    headers = {} if last_event_id is None else {"Last-Event-ID": str(last_event_id)}
    events = []
    with connect_sse(client, "GET", path, headers=headers, timeout=timeout_s) as source:
        source.response.raise_for_status()
        if source.response.status_code == 204:
            return []  # a resume at or past a finished job's terminal event
        for sse in source.iter_sse():
            # httpx-sse dispatches a heartbeat comment as an empty event once an id was seen;
            # the SSE spec (and browsers) ignore those. Named frames (``event: queue``) are not
            # job events: read as an EventSource's onmessage does, without them.
            if sse.data and sse.event == "message":
                events.append(FeedEvent(id=int(sse.id), data=json.loads(sse.data)))
    return events


def png_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG"
        return image.size


def png_bytes(width: int, height: int, color: tuple[int, int, int] = (200, 80, 40)) -> bytes:
    buffer = io.BytesIO()
    image = Image.new("RGB", (width, height), color)
    for x in range(0, width, 7):  # some structure, so img2img has something to keep
        image.putpixel((x, x * height // width), (20, 200, 90))
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def noise_png(size_bytes: int, seed: int) -> bytes:
    """A PNG of about ``size_bytes``: noise does not compress."""
    side = int((size_bytes / 3) ** 0.5)
    image = Image.frombytes("RGB", (side, side), Random(seed).randbytes(side * side * 3))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()
