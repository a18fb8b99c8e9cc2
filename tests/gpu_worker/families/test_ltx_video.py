"""The ltx-video family: text- and image-to-video through the production loader, down to MP4."""

from __future__ import annotations

import io
from fractions import Fraction
from typing import Any

import av
import numpy as np
import pytest
from PIL import Image

from common.catalog import ModelRoute
from common.schemas import JobSpec, Task
from gpu_worker.encoding import encode
from gpu_worker.families import Artifact, Family, family
from gpu_worker.tiny import make_tiny
from tests.gpu_worker.families.support import job_spec, load_on_cpu, source_image


@pytest.fixture(scope="module")
def ltx() -> Family:
    return family("ltx-video")


@pytest.fixture(scope="module")
def pipelines(ltx: Family, tmp_path_factory: pytest.TempPathFactory) -> dict[Task, Any]:
    weights = make_tiny("ltx-video", tmp_path_factory.mktemp("ltx-video"))
    route = ModelRoute(
        name="ltx",
        family="ltx-video",
        weights=str(weights),
        tasks=[Task.T2V, Task.I2V],
        dtype="float32",
    )
    return load_on_cpu(ltx, route)


def spec(task: Task = Task.T2V, **params: Any) -> JobSpec:
    defaults: dict[str, Any] = {
        "prompt": "waves rolling onto a beach at sunset",
        "width": 64,
        "height": 64,
        "num_frames": 9,
        "fps": 12,
        "num_inference_steps": 2,
        "guidance_scale": 3.0,
        "seed": 7,
    }
    return job_spec("ltx", task, defaults, params)


def render(ltx: Family, pipelines: dict[Task, Any], job: JobSpec, **kwargs: Any) -> list[Artifact]:
    image = source_image() if job.task == Task.I2V else None
    on_step = kwargs.get("on_step", lambda done, total: None)
    return ltx.render(pipelines, job, image, on_step)


def decoded(artifact: Artifact) -> tuple[str, Fraction | None, list[Image.Image]]:
    encoded = encode(artifact)
    assert (encoded.content_type, encoded.extension) == ("video/mp4", "mp4")
    with av.open(io.BytesIO(encoded.data)) as container:
        stream = container.streams.video[0]
        frames = [frame.to_image() for frame in container.decode(stream)]
        return stream.codec_context.name, stream.average_rate, frames


def test_image_to_video_shares_the_text_to_video_weights(pipelines: dict[Task, Any]) -> None:
    t2v, i2v = pipelines[Task.T2V], pipelines[Task.I2V]
    assert type(t2v).__name__ == "LTXPipeline"
    assert type(i2v).__name__ == "LTXImageToVideoPipeline"
    assert i2v.transformer is t2v.transformer and i2v.vae is t2v.vae
    assert i2v.text_encoder is t2v.text_encoder


@pytest.mark.parametrize("task", [Task.T2V, Task.I2V])
def test_a_job_becomes_an_mp4_of_the_requested_frames_size_and_rate(
    ltx: Family, pipelines: dict[Task, Any], task: Task
) -> None:
    job = spec(task, width=96, height=64, num_frames=17, fps=12)
    [artifact] = render(ltx, pipelines, job)
    assert artifact.fps == 12 and artifact.image is None
    codec, rate, frames = decoded(artifact)
    assert codec == "h264"
    assert rate == 12
    assert len(frames) == 17
    assert {frame.size for frame in frames} == {(96, 64)}


@pytest.mark.parametrize("task", [Task.T2V, Task.I2V])
def test_same_seed_same_frames(ltx: Family, pipelines: dict[Task, Any], task: Task) -> None:
    def frames(seed: int) -> np.ndarray:
        [artifact] = render(ltx, pipelines, spec(task, seed=seed))
        return np.stack([np.asarray(frame) for frame in artifact.frames])

    first = frames(3)
    np.testing.assert_array_equal(first, frames(3))
    assert not np.array_equal(first, frames(4))


def test_progress_rises_to_the_step_count(ltx: Family, pipelines: dict[Task, Any]) -> None:
    calls: list[tuple[int, int]] = []
    render(ltx, pipelines, spec(num_inference_steps=3), on_step=lambda *c: calls.append(c))
    assert calls == [(1, 3), (2, 3), (3, 3)]


def test_image_to_video_without_an_image_is_refused(
    ltx: Family, pipelines: dict[Task, Any]
) -> None:
    with pytest.raises(ValueError, match="input image"):
        ltx.render(pipelines, spec(Task.I2V), None, lambda done, total: None)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"num_inference_steps": 1}, "at least 2"),
        ({"num_frames": None}, "num_frames and fps"),
        ({"num_frames": 12}, "8k \\+ 1 frames"),
        ({"width": 80}, "divisible by 32"),  # the pipeline's own check
    ],
)
def test_jobs_ltx_cannot_render_are_refused_clearly(
    ltx: Family, pipelines: dict[Task, Any], params: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        render(ltx, pipelines, spec(**params))
