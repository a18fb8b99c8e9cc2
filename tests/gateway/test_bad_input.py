"""Bad input gets a clear 4xx JSON error naming the field, and nothing is enqueued."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator

import httpx
import pytest
import redis

from tests.support.client import png_bytes
from tests.support.ledger import Ledger
from tests.support.stack import Stack

VALID = {"prompt": "a lighthouse", "width": 128, "height": 128, "num_inference_steps": 2}


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(side: int = 60_000) -> bytes:
    """A tiny file whose header claims side×side pixels: decoding it would take gigabytes."""
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(b"\x00" * 1024))
        + _chunk(b"IEND", b"")
    )


@pytest.fixture(scope="module")
def client(local_stack: Stack) -> Iterator[httpx.Client]:
    book = Ledger(test=__name__)

    def count(response: httpx.Response) -> None:
        book.bad_inputs += 1
        book.server_errors += response.status_code >= 500

    with httpx.Client(
        base_url=local_stack.base_url, timeout=30, event_hooks={"response": [count]}
    ) as http:
        yield http
    book.write()


@pytest.fixture
def nothing_enqueued(local_stack: Stack, redis_server: object) -> Iterator[None]:
    """Fails the test if a job record or a stream entry appeared while it ran."""
    r = redis.Redis.from_url(local_stack.env["REDIS_URL"], decode_responses=True)

    def state() -> tuple[int, int]:
        stream = f"{local_stack.prefix}jobs:sd"
        added = r.xinfo_stream(stream)["entries-added"] if r.exists(stream) else 0
        jobs = sum(1 for _ in r.scan_iter(f"{local_stack.prefix}job:*"))
        return added, jobs

    before = state()
    yield
    assert state() == before
    r.close()


def assert_error(response: httpx.Response, status: int, field: str | None = None) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "message", "fields"} and body["message"]
    if field is not None:
        assert field in [f["field"] for f in body["fields"]], body


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({k: v for k, v in VALID.items() if k != "prompt"}, "prompt"),
        ({**VALID, "prompt": ""}, "prompt"),
        ({**VALID, "prompt": "x" * 5000}, "prompt"),
        ({**VALID, "width": "wide"}, "width"),
        ({**VALID, "width": 4104}, "width"),
        ({**VALID, "height": 2056}, "height"),  # over the route's limit
        ({**VALID, "height": 100}, "height"),  # not a multiple of 8
        ({**VALID, "num_inference_steps": 0}, "num_inference_steps"),
        ({**VALID, "num_inference_steps": 151}, "num_inference_steps"),
        ({**VALID, "guidance_scale": "high"}, "guidance_scale"),
        ({**VALID, "seed": -5}, "seed"),
        ({**VALID, "steps": 10}, "steps"),  # a misspelled field is not silently ignored
        ({**VALID, "angles": ["front"]}, "angles"),  # sd renders a single view
        ({**VALID, "angles": []}, "angles"),
    ],
)
def test_t2i_field_errors(
    client: httpx.Client, nothing_enqueued: None, body: dict[str, object], field: str
) -> None:
    assert_error(client.post("/api/sd/t2i", json=body), 422, field)


def test_malformed_requests(client: httpx.Client, nothing_enqueued: None) -> None:
    assert_error(
        client.post(
            "/api/sd/t2i", content=b"{not json", headers={"content-type": "application/json"}
        ),
        400,
    )
    assert_error(client.post("/api/sd/t2i", json=["a", "list"]), 422)
    assert_error(client.post("/api/sd/t2i", data={"prompt": "form, not json"}), 415)
    assert_error(client.post("/api/nope/t2i", json=VALID), 404)
    assert_error(client.post("/api/sd/t2v", json=VALID), 404)  # sd makes no video
    assert_error(
        client.post(
            "/api/sd/t2i",
            content=b"x" * (22 * 1024 * 1024),
            headers={"content-type": "application/json"},
        ),
        413,
    )


@pytest.mark.parametrize(
    ("files", "data", "status", "field"),
    [
        ({"prompt": (None, "no image attached")}, {}, 422, "image"),
        ({"image": ("a.txt", b"just some text", "text/plain")}, {}, 422, "image"),
        ({"image": ("cut.png", png_bytes(128, 128)[:300], "image/png")}, {}, 422, "image"),
        ({"image": ("empty.png", b"", "image/png")}, {}, 422, "image"),
        ({"image": ("bomb.png", bomb_png(), "image/png")}, {}, 413, "image"),
        ({"image": ("tiny.png", png_bytes(16, 16), "image/png")}, {}, 422, "image"),
        (
            {"image": ("ok.png", png_bytes(128, 128), "image/png")},
            {"strength": "2"},
            422,
            "strength",
        ),
        (
            {"image": ("ok.png", png_bytes(128, 128), "image/png")},
            {"strength": "0.2", "num_inference_steps": "2"},
            422,
            "strength",
        ),
        (
            {"image": ("ok.png", png_bytes(128, 128), "image/png")},
            {"num_inference_steps": "x"},
            422,
            "num_inference_steps",
        ),
    ],
)
def test_i2i_errors(
    client: httpx.Client,
    nothing_enqueued: None,
    files: dict[str, object],
    data: dict[str, str],
    status: int,
    field: str,
) -> None:
    assert_error(client.post("/api/sd/i2i", files=files, data=data), status, field)


def test_i2i_upload_over_the_cap(client: httpx.Client, nothing_enqueued: None) -> None:
    big = b"\x89PNG\r\n\x1a\n" + b"\x00" * (21 * 1024 * 1024)
    response = client.post("/api/sd/i2i", files={"image": ("big.png", big, "image/png")})
    assert_error(response, 413)


def test_i2i_needs_multipart(client: httpx.Client, nothing_enqueued: None) -> None:
    assert_error(client.post("/api/sd/i2i", json={"prompt": "p"}), 415)


def test_v1_field_errors(client: httpx.Client, nothing_enqueued: None) -> None:
    assert_error(
        client.post("/v1/generate", json={"prompt": "p", "style_id": 999}), 422, "style_id"
    )
    assert_error(client.post("/v1/generate", json={"prompt": "p", "seed": -2}), 422, "seed")
    assert_error(client.post("/v1/generate", json={"style_id": 1}), 422, "prompt")


@pytest.mark.parametrize(
    "path", ["/api/{id}/status", "/api/{id}/events", "/v1/jobs/{id}", "/v1/jobs/{id}/events"]
)
def test_unknown_job_is_404(client: httpx.Client, path: str) -> None:
    assert_error(client.get(path.format(id="no-such-job")), 404)


def test_unknown_path_is_json_404(client: httpx.Client) -> None:
    assert_error(client.get("/nowhere/at/all"), 404)
