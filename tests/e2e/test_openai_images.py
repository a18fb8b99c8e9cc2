"""The OpenAI Images API driven by the official ``openai`` package (a client Darkroom did not
write), pointed at a live stack with API keys: a worker rendering the tiny checkpoints, the
uploader, the gateway. It generates and edits images, lists the models, and its errors arrive as
the SDK's own exception types; a client that hangs up cancels its jobs."""

from __future__ import annotations

import base64
import io
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import redis
from PIL import Image

from common.keys import Keys
from common.redis_server import RedisServer
from gateway.job_waiter import DISCONNECT_MESSAGE
from tests.conftest import _stack
from tests.support.keys import create_key
from tests.support.stack import Stack
from tests.support.waiting import wait_for

FAST = {"num_inference_steps": 2}
RENDER_TIMEOUT_S = 180


@pytest.fixture(scope="module")
def stack(
    redis_server: RedisServer, models_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    stack = _stack(
        "openai",
        ("worker", "uploader", "gateway"),
        redis_server,
        models_file,
        tmp_path_factory,
        {"DARKROOM_AUTH": "keys"},
    )
    yield stack
    stack.stop_all()


@pytest.fixture(scope="module")
def admin_key(stack: Stack) -> str:
    return create_key(stack, f"admin-{uuid.uuid4().hex[:8]}", admin=True)


def new_key(stack: Stack, admin_key: str, **limits: Any) -> tuple[str, str]:
    """A key with these limits, made over HTTP: (its name, the key)."""
    name = f"oa-{uuid.uuid4().hex[:10]}"
    answer = httpx.post(
        f"{stack.base_url}/v1/keys",
        json={"name": name, **limits},
        headers={"Authorization": f"Bearer {admin_key}"},
    )
    assert answer.status_code == 201, answer.text
    return name, answer.json()["key"]


@pytest.fixture(scope="module")
def key(stack: Stack, admin_key: str) -> str:
    return new_key(stack, admin_key, rate_per_min=None, max_queued=None)[1]


def sdk(stack: Stack, key: str) -> openai.OpenAI:
    # No retries: a test sees the first answer, as the SDK's exception.
    return openai.OpenAI(
        base_url=f"{stack.base_url}/v1", api_key=key, max_retries=0, timeout=RENDER_TIMEOUT_S
    )


@pytest.fixture(scope="module")
def client(stack: Stack, key: str) -> openai.OpenAI:
    return sdk(stack, key)


def png_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG"
        image.load()
        return image.size


def rendered_batch_sizes(stack: Stack, job_ids: set[str]) -> list[int]:
    """The size of the pipeline call each of these jobs rendered in (the worker's log)."""
    sizes = []
    for line in stack.log("worker").splitlines():
        if '"job.rendered"' in line:
            entry = json.loads(line)
            if entry.get("job_id") in job_ids:
                sizes.append(int(entry["batch"]))
    return sizes


def jobs_of(stack: Stack, tenant: str) -> list[dict[str, str]]:
    """Every job record of ``tenant`` (a key of its own per test), read from Redis."""
    r = redis.Redis.from_url(stack.env["REDIS_URL"], decode_responses=True)
    try:
        found = []
        for name in r.scan_iter(Keys(stack.prefix).job("*"), count=1000):
            record: dict[str, str] = r.hgetall(name)  # type: ignore[assignment]
            if record.get("tenant") == tenant:
                found.append(record)
        return found
    finally:
        r.close()


def test_generates_n_images_as_urls_rendered_together(
    client: openai.OpenAI, stack: Stack, admin_key: str
) -> None:
    tenant, key = new_key(stack, admin_key, rate_per_min=None, max_queued=None)
    answer = sdk(stack, key).images.generate(
        model="sd",
        prompt="a lighthouse at dusk",
        n=2,
        size="64x96",
        response_format="url",
        quality="high",  # OpenAI's, accepted and ignored
        extra_body={**FAST, "seed": 41},
    )
    assert answer.created > 0 and answer.data is not None and len(answer.data) == 2
    assert answer.output_format == "png"
    for image in answer.data:
        assert image.url is not None and image.b64_json is None
        fetched = httpx.get(image.url, timeout=30).raise_for_status()
        assert png_size(fetched.content) == (64, 96)
    # Two jobs with consecutive seeds, queued together and rendered in one pipeline call.
    jobs = jobs_of(stack, tenant)
    assert sorted(json.loads(j["params"])["seed"] for j in jobs) == [41, 42]
    assert {j["status"] for j in jobs} == {"completed"}
    assert max(rendered_batch_sizes(stack, {j["job_id"] for j in jobs})) == 2


def test_generates_n_images_as_base64(client: openai.OpenAI) -> None:
    answer = client.images.generate(
        prompt="a red bicycle", n=2, size="64x64", response_format="b64_json", extra_body=FAST
    )
    assert answer.data is not None and len(answer.data) == 2
    pngs = [base64.b64decode(image.b64_json or "") for image in answer.data]
    assert [png_size(png) for png in pngs] == [(64, 64), (64, 64)]
    assert pngs[0] != pngs[1]  # two seeds, two images


def test_edits_an_image(client: openai.OpenAI, tmp_path: Path) -> None:
    source = io.BytesIO()
    Image.new("RGB", (128, 96), (200, 40, 40)).save(source, format="PNG")
    answer = client.images.edit(
        model="sd",
        image=("in.png", source.getvalue(), "image/png"),
        prompt="make it blue",
        response_format="b64_json",
        extra_body=FAST | {"strength": 1.0},
    )
    assert answer.data is not None and len(answer.data) == 1
    # No size: the input's aspect ratio within the route's limits.
    assert png_size(base64.b64decode(answer.data[0].b64_json or "")) == (128, 96)

    # OpenAI's array form, image[], with a size and n.
    path = tmp_path / "in.png"
    path.write_bytes(source.getvalue())
    with path.open("rb") as fh:
        answer = client.images.edit(
            image=[fh], prompt="again", n=2, size="64x64", extra_body=FAST | {"strength": 1.0}
        )
    assert answer.data is not None and len(answer.data) == 2
    for image in answer.data:
        assert image.url is not None
        assert png_size(httpx.get(image.url, timeout=30).content) == (64, 64)


def test_a_mask_is_refused_as_no_route_can_inpaint(client: openai.OpenAI) -> None:
    source = io.BytesIO()
    Image.new("RGBA", (64, 64)).save(source, format="PNG")
    with pytest.raises(openai.BadRequestError) as refused:
        client.images.edit(
            image=("in.png", source.getvalue(), "image/png"),
            mask=("mask.png", source.getvalue(), "image/png"),
            prompt="fill the hole",
        )
    assert refused.value.param == "mask" and "inpaint" in refused.value.message
    assert refused.value.status_code == 400


def test_lists_the_image_routes_as_models(client: openai.OpenAI) -> None:
    ids = [model.id for model in client.models.list()]
    assert "sd" in ids and "flux" in ids
    assert "ltx" not in ids  # video only: no images to make


def test_errors_are_the_sdks_exception_types(
    client: openai.OpenAI, stack: Stack, admin_key: str
) -> None:
    with pytest.raises(openai.BadRequestError) as bad_size:
        client.images.generate(prompt="x", size="100x100", extra_body=FAST)
    assert bad_size.value.status_code == 400 and bad_size.value.param == "size"
    assert bad_size.value.type == "invalid_request_error"

    with pytest.raises(openai.BadRequestError) as bad_field:
        client.images.generate(prompt="x", n=11)
    assert bad_field.value.param == "n"

    with pytest.raises(openai.NotFoundError) as unknown:
        client.images.generate(model="dall-e-3", prompt="x")
    assert unknown.value.code == "model_not_found"
    assert isinstance(unknown.value.body, dict) and "sd" in unknown.value.body["message"]

    with pytest.raises(openai.AuthenticationError) as refused:
        sdk(stack, "not-a-key").images.generate(prompt="x")
    assert refused.value.code == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        sdk(stack, "not-a-key").models.list()

    # One request a minute: the second is over the key's rate, whatever it asks.
    _, limited = new_key(stack, admin_key, rate_per_min=1, max_queued=None)
    with pytest.raises(openai.BadRequestError):
        sdk(stack, limited).images.generate(prompt="x", size="1x1")
    with pytest.raises(openai.RateLimitError) as rate:
        sdk(stack, limited).images.generate(prompt="x", extra_body=FAST)
    assert rate.value.code == "rate_limit_exceeded"
    assert int(rate.value.response.headers["retry-after"]) > 0

    # n images are n jobs against max_queued: three do not fit in two, and nothing is queued.
    tenant, small = new_key(stack, admin_key, rate_per_min=None, max_queued=2)
    with pytest.raises(openai.RateLimitError) as full:
        sdk(stack, small).images.generate(prompt="x", n=3, extra_body=FAST)
    assert full.value.code == "max_queued_exceeded"
    assert jobs_of(stack, tenant) == []


def test_a_disconnect_cancels_the_jobs(stack: Stack, admin_key: str) -> None:
    tenant, key = new_key(stack, admin_key, rate_per_min=None, max_queued=None)
    body = {"prompt": "a long render", "n": 2, "size": "2048x2048", "num_inference_steps": 150}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{stack.base_url}/v1/images/generations",
            json=body,
            headers={"Authorization": f"Bearer {key}"},
            timeout=httpx.Timeout(30, read=3),
        )

    def all_canceled() -> list[dict[str, str]] | None:
        jobs = jobs_of(stack, tenant)
        done = len(jobs) == 2 and all(j["status"] == "canceled" for j in jobs)
        return jobs if done else None

    jobs = wait_for(all_canceled, timeout_s=60, what="the jobs to be canceled")
    assert {j["message"] for j in jobs} == {DISCONNECT_MESSAGE}


def test_errors_have_openai_shape_and_other_v1_routes_keep_theirs(stack: Stack, key: str) -> None:
    http = httpx.Client(base_url=stack.base_url, timeout=30)
    bad = {"Authorization": "Bearer nope"}
    for method, path in [("POST", "/v1/images/generations"), ("GET", "/v1/models")]:
        answer = http.request(method, path, headers=bad, json={"prompt": "x"})
        assert answer.status_code == 401
        assert set(answer.json()) == {"error"}
        assert set(answer.json()["error"]) == {"message", "type", "param", "code"}
    # A wrong method on an OpenAI path is OpenAI-shaped too; a bad field is a 400, not a 422.
    good = {"Authorization": f"Bearer {key}"}
    assert http.get("/v1/images/edits", headers=good).json()["error"]["code"]
    answer = http.post("/v1/images/generations", headers=good, json={"prompt": "x", "n": 0})
    assert answer.status_code == 400 and answer.json()["error"]["param"] == "n"
    # Seed 2's routes keep Darkroom's own shape.
    answer = http.post("/v1/generate", headers=good, json={"prompt": "x", "width": 7})
    assert answer.status_code == 422 and answer.json()["error"] == "invalid_request"
    http.close()
