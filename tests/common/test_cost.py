"""``job_cost``: the megapixel-step, the one unit quotas and usage share."""

from __future__ import annotations

import pytest

from common.cost import job_cost, job_renders
from common.schemas import RenderParams, Task


def params(**fields: object) -> RenderParams:
    base: dict[str, object] = {
        "prompt": "p",
        "width": 512,
        "height": 512,
        "num_inference_steps": 50,
        "guidance_scale": 7.5,
        "seed": 1,
    }
    return RenderParams.model_validate(base | fields)


def test_an_image_costs_its_pixels_times_its_steps() -> None:
    assert job_cost(params(), Task.T2I) == pytest.approx(512 * 512 * 50 / 1e6)
    # Twice the steps or twice the pixels: twice the cost.
    assert job_cost(params(num_inference_steps=100), Task.T2I) == 2 * job_cost(params(), Task.T2I)
    assert job_cost(params(width=1024), Task.I2I) == 2 * job_cost(params(), Task.I2I)


def test_a_video_pays_for_every_frame() -> None:
    video = params(width=704, height=480, num_inference_steps=30, num_frames=121, fps=24)
    assert job_cost(video, Task.T2V) == pytest.approx(704 * 480 * 30 * 121 / 1e6)


def test_a_multi_angle_job_pays_for_each_view_and_its_base_image() -> None:
    views = params(width=1024, height=1024, num_inference_steps=40, angles=["front", "back"])
    one_render = 1024 * 1024 * 40 / 1e6
    # Text-to-image renders a base image first; image-to-image views the upload.
    assert job_renders(views, Task.T2I) == 3
    assert job_cost(views, Task.T2I) == pytest.approx(3 * one_render)
    assert job_cost(views, Task.I2I) == pytest.approx(2 * one_render)
