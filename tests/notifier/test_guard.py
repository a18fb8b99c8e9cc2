"""The SSRF guard on a live gateway and notifier with no allow-list: literal internal addresses are
422 at submit with nothing queued, and a name that resolves to loopback is ``blocked`` with
nothing sent to the receiver listening there. Packets go to loopback only."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from PIL import Image

from common.keys import Keys
from common.redis_server import RedisServer
from tests.conftest import _stack
from tests.support.receiver import Receiver
from tests.support.stack import Stack
from tests.support.waiting import wait_for

SMALL = {"prompt": "guarded", "width": 64, "height": 64, "num_inference_steps": 2}


@pytest.fixture(scope="module")
def guarded(
    redis_server: RedisServer, models_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    # No worker: a job waits until it is canceled, and the cancel is the event it reports.
    extra = {"DARKROOM_WEBHOOK_SECRET": "whsec_" + "A" * 32}
    stack = _stack(
        "guard", ("gateway", "notifier"), redis_server, models_file, tmp_path_factory, extra
    )
    yield stack
    stack.stop_all()


@pytest.fixture(scope="module")
def http(guarded: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=guarded.base_url, timeout=30) as client:
        yield client


def queued(stack: Stack, redis_server: RedisServer) -> int:
    with redis.Redis.from_url(redis_server.url) as r:
        return int(r.xlen(Keys(stack.prefix).backlog("sd")))


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.1/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::ffff:127.0.0.1]:9/hook",
        "http://127.0.0.1:9/hook",
        "ftp://example.com/hook",
        "not a url",
    ],
)
def test_refused_at_submit_with_nothing_queued(
    guarded: Stack, redis_server: RedisServer, http: httpx.Client, url: str
) -> None:
    before = queued(guarded, redis_server)
    answer = http.post("/api/sd/t2i", json=SMALL | {"webhook": url})
    assert answer.status_code == 422, answer.text
    assert answer.json()["fields"][0]["field"] == "webhook"
    made = http.post("/v1/generate", json=SMALL | {"webhook": url})
    assert made.status_code == 422 and made.json()["fields"][0]["field"] == "webhook"
    assert queued(guarded, redis_server) == before


def test_a_form_route_takes_the_fields_and_refuses_alike(http: httpx.Client) -> None:
    png = io.BytesIO()
    Image.new("RGB", (64, 64), "white").save(png, format="PNG")
    files = {"image": ("in.png", png.getvalue(), "image/png")}
    bad = http.post("/api/sd/i2i", data={"prompt": "x", "webhook": "http://10.0.0.1/"}, files=files)
    assert bad.status_code == 422 and bad.json()["fields"][0]["field"] == "webhook"
    wrong = http.post(
        "/api/sd/i2i",
        data={
            "prompt": "x",
            "webhook": "https://hooks.example.com/x",
            "webhook_events_filter": "start,finished",
        },
        files=files,
    )
    assert wrong.status_code == 422
    assert wrong.json()["fields"][0]["field"].startswith("webhook_events_filter")
    good = http.post(
        "/api/sd/i2i",
        data={
            "prompt": "x",
            "webhook": "https://hooks.example.com/x",
            "webhook_events_filter": "start,completed",
        },
        files=files,
    )
    assert good.status_code == 200, good.text
    assert http.delete(f"/api/{good.json()['session_id']}").status_code == 200


def test_a_name_that_resolves_to_loopback_is_blocked_and_nothing_is_sent(
    http: httpx.Client,
) -> None:
    receiver = Receiver().start()
    try:
        answer = http.post("/api/sd/t2i", json=SMALL | {"webhook": receiver.url_named("localhost")})
        assert answer.status_code == 200, answer.text  # a name: the notifier decides
        job_id = answer.json()["session_id"]
        assert http.delete(f"/api/{job_id}").status_code == 200

        def settled() -> list[dict[str, object]]:
            found = http.get(f"/api/{job_id}/webhooks").json()["deliveries"]
            return [d for d in found if d["state"] != "pending"]

        wait_for(settled, timeout_s=30, what="the delivery to be judged")
        (delivery,) = settled()
        assert delivery["state"] == "blocked" and delivery["type"] == "job.canceled"
        (attempt,) = delivery["attempts"]  # type: ignore[misc]
        assert "loopback" in attempt["error"] and attempt["status_code"] is None
        assert receiver.received == []
    finally:
        receiver.stop()
