"""The result cache's keys and entries: a digest changes with anything that changes the render,
and only with that; entries live on a real Redis for their TTL."""

from __future__ import annotations

import uuid

import pytest
from redis.asyncio import Redis

from common.keys import Keys
from common.result_cache import CachedResult, ResultCache, entry_digest, request_digest
from common.schemas import RenderParams, Task

PARAMS = RenderParams(
    prompt="a fox", width=64, height=64, num_inference_steps=2, guidance_scale=7.5, seed=42
)


def digest(**changes: object) -> str:
    base: dict[str, object] = {
        "tenant": "alice",
        "model": "sd",
        "task": Task.T2I,
        "params": PARAMS,
        "image": None,
    }
    return request_digest(**(base | changes))  # type: ignore[arg-type]


def test_the_same_request_has_the_same_digest() -> None:
    same = RenderParams.model_validate_json(PARAMS.model_dump_json())
    assert digest() == digest(params=same)
    assert digest(image=b"png") == digest(image=b"png")


@pytest.mark.parametrize(
    "changes",
    [
        {"tenant": "bob"},
        {"tenant": None},
        {"model": "sdxl"},
        {"task": Task.I2I},
        {"image": b"png"},
        {"params": PARAMS.model_copy(update={"seed": 43})},
        {"params": PARAMS.model_copy(update={"prompt": "a fox "})},
        {"params": PARAMS.model_copy(update={"negative_prompt": "blur"})},
        {"params": PARAMS.model_copy(update={"width": 72})},
        {"params": PARAMS.model_copy(update={"num_inference_steps": 3})},
        {"params": PARAMS.model_copy(update={"guidance_scale": 7.0})},
        {"params": PARAMS.model_copy(update={"strength": 0.5})},
        {"params": PARAMS.model_copy(update={"angles": ["front"]})},
        {"params": PARAMS.model_copy(update={"num_frames": 9, "fps": 8})},
    ],
)
def test_anything_that_changes_the_render_changes_the_digest(changes: dict[str, object]) -> None:
    assert digest(**changes) != digest()


def test_input_images_are_told_apart_by_their_bytes() -> None:
    assert digest(image=b"one image") != digest(image=b"another image")


def test_the_fingerprint_is_part_of_the_key() -> None:
    request = digest()
    assert entry_digest(request, "fp-a") == entry_digest(request, "fp-a")
    assert entry_digest(request, "fp-a") != entry_digest(request, "fp-b")


async def test_entries_are_found_under_any_of_the_digests_and_expire(redis: Redis) -> None:
    keys = Keys(f"cache-test-{uuid.uuid4().hex[:8]}:")
    cache = ResultCache(redis, keys)
    result = CachedResult(job_id="j1", keys=["generations/a.png"])
    await cache.record("d2", result, ttl_s=60)
    await cache.record("d3", CachedResult(job_id="j3", keys=["x"]), ttl_s=None)

    assert await cache.find([]) is None
    assert await cache.find(["d1"]) is None
    assert await cache.find(["d1", "d2"]) == ("d2", result)
    assert 0 < await redis.ttl(keys.result_cache("d2")) <= 60
    assert await redis.ttl(keys.result_cache("d3")) == -1  # local storage: until deleted
    await cache.forget("d2")
    assert await cache.find(["d2"]) is None
