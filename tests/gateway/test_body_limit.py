"""Uploads in flight at once are capped per gateway (their parts spill to /tmp): past the cap a
new upload is a 503 with Retry-After and nothing is queued; other requests are not affected."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from common.redis_server import RedisServer
from tests.conftest import _stack
from tests.support.client import png_bytes
from tests.support.stack import Stack
from tests.support.waiting import wait_for

BOUNDARY = "darkroom-test-boundary"


@pytest.fixture(scope="module")
def gateway_one_upload(
    redis_server: RedisServer, models_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    stack = _stack(
        "uploads",
        ("gateway",),
        redis_server,
        models_file,
        tmp_path_factory,
        extra={"DARKROOM_MAX_CONCURRENT_UPLOADS": "1"},
    )
    yield stack
    stack.stop_all()


def multipart(image: bytes) -> bytes:
    parts = [
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="prompt"\r\n\r\nslow\r\n',
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"; filename="in.png"\r\n'
        "Content-Type: image/png\r\n\r\n",
    ]
    return "".join(parts).encode() + image + f"\r\n--{BOUNDARY}--\r\n".encode()


def test_uploads_past_the_cap_wait_their_turn(gateway_one_upload: Stack) -> None:
    url = gateway_one_upload.base_url + "/api/sd/i2i"
    body = multipart(png_bytes(64, 64))
    headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    half = len(body) // 2
    sent_half = threading.Event()
    finish = threading.Event()
    outcome: list[httpx.Response] = []

    def slow_body() -> Iterator[bytes]:
        yield body[:half]
        sent_half.set()
        finish.wait(timeout=30)
        yield body[half:]

    def slow_upload() -> None:
        with httpx.Client(timeout=60) as client:
            outcome.append(client.post(url, content=slow_body(), headers=headers))

    uploading = threading.Thread(target=slow_upload)
    uploading.start()
    try:
        assert sent_half.wait(timeout=30)
        with httpx.Client(timeout=30) as client:

            def refused() -> httpx.Response | None:
                answer = client.post(url, content=body, headers=headers)
                return answer if answer.status_code == 503 else None

            busy = wait_for(refused, timeout_s=10, what="the second upload refused")
            assert busy.json()["error"] == "uploads_busy"
            assert int(busy.headers["Retry-After"]) > 0
            t2i = {"prompt": "no upload", "width": 64, "height": 64, "num_inference_steps": 2}
            submit = client.post(gateway_one_upload.base_url + "/api/sd/t2i", json=t2i)
            assert submit.status_code == 200  # only uploads wait
    finally:
        finish.set()
        uploading.join()
    assert outcome[0].status_code == 200, outcome[0].text
    with httpx.Client(timeout=30) as client:
        assert client.post(url, content=body, headers=headers).status_code == 200  # room again
