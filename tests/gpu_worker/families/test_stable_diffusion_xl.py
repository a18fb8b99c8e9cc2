"""The SDXL family: text- and image-to-image through the production loader, and batches in which
each job keeps its own prompt, negative prompt and seed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from common.catalog import ModelRoute
from common.schemas import JobSpec, Task
from gpu_worker.families import BatchFamily, batch_family
from gpu_worker.tiny import make_tiny
from tests.gpu_worker.families.support import job_spec, load_on_cpu, source_image


@pytest.fixture(scope="module")
def sdxl() -> BatchFamily:
    module = batch_family("stable-diffusion-xl")
    assert module is not None  # it renders batches
    return module


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny("stable-diffusion-xl", tmp_path_factory.mktemp("sdxl"))


@pytest.fixture(scope="module")
def pipelines(sdxl: BatchFamily, weights: Path) -> dict[Task, Any]:
    route = ModelRoute(
        name="sdxl",
        family="stable-diffusion-xl",
        weights=str(weights),
        tasks=[Task.T2I, Task.I2I],
        dtype="float32",
    )
    return load_on_cpu(sdxl, route)


def spec(task: Task = Task.T2I, **params: Any) -> JobSpec:
    defaults: dict[str, Any] = {
        "prompt": "a lighthouse at dusk — «très» café ☕ 猫",
        "width": 96,
        "height": 64,
        "num_inference_steps": 2,
        "guidance_scale": 5.0,
        "seed": 7,
    }
    if task == Task.I2I:
        defaults["strength"] = 0.7
    return job_spec("sdxl", task, defaults, params)


def pixels(image: Image.Image | None) -> np.ndarray:
    assert image is not None
    return np.asarray(image, dtype=np.int16)


def render(sdxl: BatchFamily, pipelines: dict[Task, Any], job: JobSpec) -> np.ndarray:
    image = source_image() if job.task == Task.I2I else None
    (artifact,) = sdxl.render(pipelines, job, image, lambda done, total: None)
    return pixels(artifact.image)


def test_image_to_image_shares_the_text_to_image_weights(pipelines: dict[Task, Any]) -> None:
    t2i, i2i = pipelines[Task.T2I], pipelines[Task.I2I]
    assert type(t2i).__name__ == "StableDiffusionXLPipeline"
    assert type(i2i).__name__ == "StableDiffusionXLImg2ImgPipeline"
    assert i2i.unet is t2i.unet and i2i.vae is t2i.vae
    assert i2i.text_encoder is t2i.text_encoder and i2i.text_encoder_2 is t2i.text_encoder_2


@pytest.mark.parametrize("task", [Task.T2I, Task.I2I])
def test_renders_the_requested_size(
    sdxl: BatchFamily, pipelines: dict[Task, Any], task: Task
) -> None:
    image = render(sdxl, pipelines, spec(task, width=160, height=64))
    assert image.shape == (64, 160, 3)  # RGB at the requested size, from a 80x48 RGBA input
    assert image.std() > 0


@pytest.mark.parametrize(("task", "total"), [(Task.T2I, 4), (Task.I2I, 2)])
def test_a_seed_gives_the_same_image_batched_or_alone(
    sdxl: BatchFamily, pipelines: dict[Task, Any], task: Task, total: int
) -> None:
    # With and without a negative prompt in one call: SDXL guides away from zeros without one.
    shared = {"num_inference_steps": 4, "strength": 0.5}
    jobs = [
        spec(task, prompt="a red fox", seed=1, **shared),
        spec(task, prompt="a blue whale", negative_prompt="blurry", seed=2, **shared),
        spec(task, prompt="a red fox", seed=3, **shared),
    ]
    steps: list[tuple[int, int]] = []
    inputs = [source_image() if task == Task.I2I else None] * len(jobs)
    batched = sdxl.render_batch(pipelines, jobs, inputs, lambda done, of: steps.append((done, of)))
    # One rising progress for the call; image-to-image runs the last `strength` of the schedule.
    assert steps == [(done, total) for done in range(1, total + 1)]
    assert len(batched) == len(jobs)
    for job, (artifact,) in zip(jobs, batched, strict=True):
        # Batched matmuls may differ in the last bit of a float: a pixel value by one at most.
        assert np.abs(pixels(artifact.image) - render(sdxl, pipelines, job)).max() <= 1
    first, _, third = (pixels(artifact.image) for (artifact,) in batched)
    assert np.abs(first - third).mean() > 5  # same prompt, other seed: another image


def test_the_negative_prompt_changes_the_image(
    sdxl: BatchFamily, pipelines: dict[Task, Any]
) -> None:
    plain = render(sdxl, pipelines, spec())
    assert not np.array_equal(plain, render(sdxl, pipelines, spec(negative_prompt="blurry")))
    np.testing.assert_array_equal(plain, render(sdxl, pipelines, spec()))


def test_image_to_image_needs_its_input(sdxl: BatchFamily, pipelines: dict[Task, Any]) -> None:
    with pytest.raises(ValueError, match="input image"):
        sdxl.render(pipelines, spec(Task.I2I), None, lambda done, total: None)
