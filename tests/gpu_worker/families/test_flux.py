"""The flux family: text- and image-to-image through the production loader and the job spec."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from common.catalog import ModelRoute
from common.schemas import JobSpec, Task
from gpu_worker.families import Family, family
from gpu_worker.tiny import make_tiny
from tests.gpu_worker.families.support import job_spec, load_on_cpu, source_image


@pytest.fixture(scope="module")
def flux() -> Family:
    return family("flux")


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny("flux", tmp_path_factory.mktemp("flux"))


@pytest.fixture(scope="module")
def pipelines(flux: Family, weights: Path) -> dict[Task, Any]:
    route = ModelRoute(
        name="flux",
        family="flux",
        weights=str(weights),
        tasks=[Task.T2I, Task.I2I],
        dtype="float32",
        size_multiple=16,
    )
    return load_on_cpu(flux, route)


def spec(task: Task = Task.T2I, **params: Any) -> JobSpec:
    defaults: dict[str, Any] = {
        "prompt": "a lighthouse at dusk — «très» café ☕ 猫",
        "negative_prompt": "blurry",  # accepted and ignored: FLUX.1-dev has no negative prompt
        "width": 128,
        "height": 96,
        "num_inference_steps": 3,
        "guidance_scale": 3.5,
        "seed": 7,
    }
    if task == Task.I2I:
        defaults["strength"] = 0.7
    return job_spec("flux", task, defaults, params)


def render(flux: Family, pipelines: dict[Task, Any], job: JobSpec) -> Image.Image:
    image = source_image() if job.task == Task.I2I else None
    artifacts = flux.render(pipelines, job, image, lambda done, total: None)
    assert len(artifacts) == 1 and artifacts[0].image is not None
    return artifacts[0].image


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def test_image_to_image_shares_the_text_to_image_weights(pipelines: dict[Task, Any]) -> None:
    t2i, i2i = pipelines[Task.T2I], pipelines[Task.I2I]
    assert type(t2i).__name__ == "FluxPipeline"
    assert type(i2i).__name__ == "FluxImg2ImgPipeline"
    assert i2i.transformer is t2i.transformer
    assert i2i.vae is t2i.vae and i2i.text_encoder_2 is t2i.text_encoder_2


@pytest.mark.parametrize("task", [Task.T2I, Task.I2I])
def test_renders_the_requested_size(flux: Family, pipelines: dict[Task, Any], task: Task) -> None:
    image = render(flux, pipelines, spec(task, width=160, height=64))
    assert image.size == (160, 64)
    assert image.mode == "RGB"
    assert pixels(image).std() > 0


@pytest.mark.parametrize(("task", "total"), [(Task.T2I, 4), (Task.I2I, 2)])
def test_progress_rises_to_the_steps_actually_run(
    flux: Family, pipelines: dict[Task, Any], task: Task, total: int
) -> None:
    # Image-to-image runs only the last `strength` of the schedule: 0.5 * 4 steps -> 2.
    job = spec(task, num_inference_steps=4, strength=0.5)
    steps: list[tuple[int, int]] = []
    flux.render(pipelines, job, source_image(), lambda done, of: steps.append((done, of)))
    assert steps == [(done, total) for done in range(1, total + 1)]


@pytest.mark.parametrize("task", [Task.T2I, Task.I2I])
def test_same_seed_same_pixels_other_seed_differs(
    flux: Family, pipelines: dict[Task, Any], task: Task
) -> None:
    first = pixels(render(flux, pipelines, spec(task, seed=1)))
    np.testing.assert_array_equal(first, pixels(render(flux, pipelines, spec(task, seed=1))))
    assert not np.array_equal(first, pixels(render(flux, pipelines, spec(task, seed=2))))


def test_image_to_image_needs_its_input(flux: Family, pipelines: dict[Task, Any]) -> None:
    with pytest.raises(ValueError, match="input image"):
        flux.render(pipelines, spec(Task.I2I), None, lambda done, total: None)


def test_text_to_image_only_route_loads_one_pipeline(flux: Family, weights: Path) -> None:
    route = ModelRoute(name="flux", family="flux", weights=str(weights), tasks=[Task.T2I])
    assert set(flux.load(route, torch.float32, torch.device("cpu"))) == {Task.T2I}
