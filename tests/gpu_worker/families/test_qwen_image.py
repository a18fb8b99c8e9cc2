"""The qwen-image family: one view per camera angle, through the production loader and job spec."""

from __future__ import annotations

from collections.abc import Iterator
from itertools import combinations
from pathlib import Path
from typing import Any

import diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_plus as edit_plus
import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline, QwenImageEditPlusPipeline
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from PIL import Image

from common.catalog import Lora, ModelRoute
from common.schemas import JobSpec, Task
from gpu_worker.families import Family, family
from gpu_worker.families.qwen_image import angle_prompt
from gpu_worker.tiny import make_tiny
from tests.gpu_worker.families.support import job_spec, load_on_cpu, source_image

ANGLES = ["front", "left 45°", "top-down"]


@pytest.fixture(scope="module")
def qwen() -> Family:
    return family("qwen-image")


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("qwen")
    return {name: make_tiny(name, root / name) for name in ("qwen-image", "qwen-image-edit")}


def route(weights: dict[str, Path], **fields: Any) -> ModelRoute:
    defaults: dict[str, Any] = {
        "name": "qwen-multi-angle",
        "family": "qwen-image",
        "weights": str(weights["qwen-image"]),
        "edit_weights": str(weights["qwen-image-edit"]),
        "tasks": [Task.T2I, Task.I2I],
        "dtype": "float32",
        "size_multiple": 16,
        "default_angles": ANGLES,
    }
    return ModelRoute(**(defaults | fields))


@pytest.fixture(scope="module")
def small_condition_image() -> Iterator[None]:
    # The edit pipeline VAE-encodes its input at ~1024x1024 whatever the output size (a module
    # constant), once per view; 128x128 keeps these tests in seconds on a small CPU.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(edit_plus, "VAE_IMAGE_SIZE", 128 * 128)
        yield


@pytest.fixture(scope="module")
def pipelines(
    qwen: Family, weights: dict[str, Path], small_condition_image: None
) -> dict[Task, Any]:
    return load_on_cpu(qwen, route(weights))


def spec(task: Task = Task.I2I, **params: Any) -> JobSpec:
    defaults: dict[str, Any] = {
        "prompt": "a ceramic owl — «très» café ☕ 猫",
        "width": 96,
        "height": 64,
        "num_inference_steps": 2,
        "guidance_scale": 1.0,
        "seed": 7,
        "angles": ANGLES,
    }
    return job_spec("qwen-multi-angle", task, defaults, params)


def render(qwen: Family, pipelines: dict[Task, Any], job: JobSpec) -> list[np.ndarray]:
    image = source_image() if job.task == Task.I2I else None
    artifacts = qwen.render(pipelines, job, image, lambda done, total: None)
    assert all(a.image is not None for a in artifacts)
    return [np.asarray(a.image, dtype=np.int16) for a in artifacts if a.image is not None]


class Spy:
    """Records the keyword arguments of each call to a pipeline, then makes the call."""

    def __init__(self, pipe: DiffusionPipeline) -> None:
        self.pipe = pipe
        self.calls: list[dict[str, Any]] = []

    def __call__(self, **kwargs: Any) -> Any:
        self.calls.append(kwargs)
        return self.pipe(**kwargs)


def test_views_are_edits_and_text_to_image_shares_the_vae_and_text_encoder(
    pipelines: dict[Task, Any],
) -> None:
    t2i, edit = pipelines[Task.T2I], pipelines[Task.I2I]
    assert type(t2i).__name__ == "QwenImagePipeline"
    assert type(edit).__name__ == "QwenImageEditPlusPipeline"
    assert t2i.vae is edit.vae and t2i.text_encoder is edit.text_encoder
    assert t2i.transformer is not edit.transformer
    assert t2i.scheduler is not edit.scheduler  # schedulers keep per-call state


@pytest.mark.parametrize("task", [Task.T2I, Task.I2I])
def test_one_distinct_view_per_angle_at_the_requested_size(
    qwen: Family, pipelines: dict[Task, Any], task: Task
) -> None:
    views = render(qwen, pipelines, spec(task))
    assert len(views) == len(ANGLES)
    for view in views:
        assert view.shape == (64, 96, 3)  # height, width, RGB
        assert view.std() > 0
    for a, b in combinations(views, 2):
        assert not np.array_equal(a, b)


@pytest.mark.parametrize(("task", "renders"), [(Task.T2I, 4), (Task.I2I, 3)])
def test_progress_rises_once_per_step_across_the_whole_job(
    qwen: Family, pipelines: dict[Task, Any], task: Task, renders: int
) -> None:
    # Text-to-image renders the base image first, then one edit per angle.
    steps: list[tuple[int, int]] = []
    qwen.render(pipelines, spec(task), source_image(), lambda done, of: steps.append((done, of)))
    total = 2 * renders
    assert steps == [(done, total) for done in range(1, total + 1)]


@pytest.mark.parametrize("task", [Task.T2I, Task.I2I])
def test_same_seed_same_views_other_seed_differs(
    qwen: Family, pipelines: dict[Task, Any], task: Task
) -> None:
    first = render(qwen, pipelines, spec(task, seed=1))
    for a, b in zip(first, render(qwen, pipelines, spec(task, seed=1)), strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(first, render(qwen, pipelines, spec(task, seed=2)), strict=True):
        assert not np.array_equal(a, b)


def test_each_view_is_an_edit_of_the_base_image_told_its_angle(
    qwen: Family, pipelines: dict[Task, Any]
) -> None:
    base, edit = Spy(pipelines[Task.T2I]), Spy(pipelines[Task.I2I])
    job = spec(Task.T2I, guidance_scale=4.0, negative_prompt="blurry")
    qwen.render({Task.T2I: base, Task.I2I: edit}, job, None, lambda done, total: None)

    (base_call,) = base.calls
    assert base_call["prompt"] == job.params.prompt
    assert base_call["generator"].initial_seed() == 7
    assert [call["prompt"] for call in edit.calls] == [
        angle_prompt(angle, job.params.prompt) for angle in ANGLES
    ]
    assert [call["generator"].initial_seed() for call in edit.calls] == [7, 8, 9]
    for call in (base_call, *edit.calls):
        # Qwen-Image's guidance is true CFG: on with the scale and a negative prompt.
        assert call["true_cfg_scale"] == 4.0 and call["negative_prompt"] == "blurry"
        assert (call["width"], call["height"]) == (96, 64)
    # Every view starts from the base image, not from the view before.
    assert all(call["image"] == edit.calls[0]["image"] for call in edit.calls)
    assert edit.calls[0]["image"][0].size == (96, 64)


def test_without_guidance_no_negative_prompt_is_sent(
    qwen: Family, pipelines: dict[Task, Any]
) -> None:
    edit = Spy(pipelines[Task.I2I])
    qwen.render({Task.I2I: edit}, spec(angles=["back"]), source_image(), lambda d, t: None)
    (call,) = edit.calls
    assert call["true_cfg_scale"] == 1.0 and "negative_prompt" not in call
    assert call["image"][0].mode == "RGB" and call["image"][0].size == (80, 48)


@pytest.mark.parametrize(
    ("angle", "expected"),
    [
        ("left 45°", "Rotate the camera 45 degrees to the left."),
        ("Left 45", "Rotate the camera 45 degrees to the left."),
        ("right 45 degrees", "Rotate the camera 45 degrees to the right."),
        ("Top down", "Turn the camera to a top-down view."),
        ("close-up", "Turn the camera to a close-up."),
        ("Wide angle", "Turn the camera to a wide-angle lens."),
        ("back", "from behind"),
        ("three-quarter rear", "View the subject from three-quarter rear."),
    ],
)
def test_angle_prompt_names_the_camera_move(angle: str, expected: str) -> None:
    assert expected in angle_prompt(angle)
    assert angle_prompt(angle, "  keep the lighting ").endswith(". keep the lighting")


def write_lora(edit_dir: Path, out_dir: Path) -> Path:
    pipe = QwenImageEditPlusPipeline.from_pretrained(edit_dir, local_files_only=True)
    torch.manual_seed(3)
    # Random (not zero) B matrices, so the adapter visibly changes the output.
    config = LoraConfig(
        r=4, lora_alpha=4, init_lora_weights=False, target_modules=["to_q", "to_k", "to_v"]
    )
    pipe.transformer.add_adapter(config)
    QwenImageEditPlusPipeline.save_lora_weights(
        out_dir,
        transformer_lora_layers=get_peft_model_state_dict(pipe.transformer),
        weight_name="angles.safetensors",
    )
    return out_dir


def test_loras_go_into_the_edit_model_and_change_the_views(
    qwen: Family, weights: dict[str, Path], tmp_path: Path, small_condition_image: None
) -> None:
    lora = Lora(
        weights=str(write_lora(weights["qwen-image-edit"], tmp_path / "lora")),
        weight_name="angles.safetensors",
        adapter_name="angles",
    )
    plain = qwen.load(route(weights), torch.float32, torch.device("cpu"))
    styled = qwen.load(route(weights, loras=[lora]), torch.float32, torch.device("cpu"))
    assert styled[Task.I2I].get_active_adapters() == ["angles"]
    assert not getattr(styled[Task.T2I].transformer, "peft_config", None)  # base model untouched
    for a, b in zip(render(qwen, plain, spec()), render(qwen, styled, spec()), strict=True):
        assert not np.array_equal(a, b)


def test_an_image_to_image_route_loads_only_the_edit_model(
    qwen: Family, weights: dict[str, Path]
) -> None:
    loaded = qwen.load(route(weights, tasks=[Task.I2I]), torch.float32, torch.device("cpu"))
    assert set(loaded) == {Task.I2I}


def test_a_route_without_edit_weights_is_refused(qwen: Family, weights: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match="edit_weights"):
        qwen.load(route(weights, edit_weights=None), torch.float32, torch.device("cpu"))


@pytest.mark.parametrize(
    ("job", "image", "message"),
    [
        (spec(Task.I2I), None, "input image"),
        (spec(Task.I2I, angles=[]), source_image(), "angle"),
        (spec(Task.T2I, num_inference_steps=1), None, "at least 2"),
    ],
)
def test_unrenderable_jobs_fail_before_rendering(
    qwen: Family, job: JobSpec, image: Image.Image | None, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        qwen.render({}, job, image, lambda done, total: None)


def test_previews_show_each_view_as_it_renders(qwen: Family, pipelines: dict[Task, Any]) -> None:
    heard: list[tuple[int, int, Image.Image]] = []

    def previews(done: int, total: int, latents: torch.Tensor, preview: Any) -> None:
        heard.append((done, total, preview.image(preview.take(latents, 0).clone())))

    qwen.render(pipelines, spec(Task.I2I), source_image(), lambda done, of: None, previews)

    # Every step of every view, each the view's own latents at the job's size and aspect.
    assert [(done, total) for done, total, _ in heard] == [(d, 6) for d in range(1, 7)]
    assert all(image.size == (96, 64) and image.mode == "RGB" for _, _, image in heard)
    last_of_each_view = [np.asarray(image) for done, _, image in heard if done % 2 == 0]
    for a, b in combinations(last_of_each_view, 2):
        assert not np.array_equal(a, b)
