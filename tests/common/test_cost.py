"""The cost unit: megapixel-steps, from pixels × steps × frames × renders."""

from __future__ import annotations

import pytest

from common.cost import job_cost
from common.schemas import RenderParams, Task


def params(**fields: object) -> RenderParams:
    base: dict[str, object] = {
        "prompt": "p",
        "width": 1000,
        "height": 1000,
        "num_inference_steps": 10,
        "guidance_scale": 1.0,
        "seed": 1,
    }
    return RenderParams.model_validate(base | fields)


def test_an_image_costs_its_megapixels_times_its_steps() -> None:
    assert job_cost(Task.T2I, params()) == pytest.approx(10.0)
    assert job_cost(Task.T2I, params(width=1024, height=1024, num_inference_steps=30)) == (
        pytest.approx(31.457, abs=1e-3)
    )


def test_frames_and_renders_multiply_it() -> None:
    assert job_cost(Task.T2V, params(num_frames=9)) == pytest.approx(90.0)
    # Multi-angle text-to-image: one render per angle plus the base image; editing an input
    # image renders the angles only.
    angles = ["front", "back", "left"]
    assert job_cost(Task.T2I, params(angles=angles)) == pytest.approx(40.0)
    assert job_cost(Task.I2I, params(angles=angles)) == pytest.approx(30.0)
