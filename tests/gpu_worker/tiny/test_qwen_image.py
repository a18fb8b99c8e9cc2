"""The tiny Qwen-Image checkpoints load through the production loaders, tokenize prompts the way the
pipelines expect of Qwen's vocabulary, and render seed-dependent images of the requested size."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_plus as edit_plus
import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline, QwenImageEditPlusPipeline, QwenImagePipeline
from PIL import Image
from transformers import Qwen2Tokenizer

from gpu_worker.tiny import make_tiny

SPECIAL = ("<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|image_pad|>", "<|vision_end|>")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-qwen")
    return {name: make_tiny(name, root / name) for name in ("qwen-image", "qwen-image-edit")}


@pytest.fixture(scope="module")
def small_condition_image() -> Iterator[None]:
    # The edit pipeline VAE-encodes its input at ~1024x1024 whatever the output size (a module
    # constant); 128x128 keeps these tests in seconds on a small CPU. The code path is the same.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(edit_plus, "VAE_IMAGE_SIZE", 128 * 128)
        yield


@pytest.fixture(scope="module")
def base(checkpoints: dict[str, Path]) -> QwenImagePipeline:
    pipe = QwenImagePipeline.from_pretrained(checkpoints["qwen-image"], local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def edit(checkpoints: dict[str, Path], small_condition_image: None) -> QwenImageEditPlusPipeline:
    pipe = QwenImageEditPlusPipeline.from_pretrained(
        checkpoints["qwen-image-edit"], local_files_only=True
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def source_image() -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (60, 100, 3), np.uint8))


def test_both_checkpoints_are_diffusers_folders(checkpoints: dict[str, Path]) -> None:
    for name, path in checkpoints.items():
        assert (path / "model_index.json").is_file()
        for part in ("transformer", "vae", "text_encoder"):
            assert (path / part / "config.json").is_file(), (name, part)
        assert (path / "scheduler" / "scheduler_config.json").is_file(), name
        assert (path / "tokenizer" / "tokenizer.json").is_file(), name
    assert (checkpoints["qwen-image-edit"] / "processor" / "processor_config.json").is_file()


def test_vae_and_text_encoder_are_the_same_in_both(checkpoints: dict[str, Path]) -> None:
    # As in production (one VAE, one Qwen2.5-VL), which lets the family load them once.
    for part in ("vae/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"):
        base_bytes = (checkpoints["qwen-image"] / part).read_bytes()
        assert base_bytes == (checkpoints["qwen-image-edit"] / part).read_bytes()


@pytest.mark.parametrize("name", ["base", "edit"])
def test_system_prompt_is_exactly_the_tokens_the_pipeline_drops(
    request: pytest.FixtureRequest, name: str
) -> None:
    pipe: DiffusionPipeline = request.getfixturevalue(name)
    tokenizer: Qwen2Tokenizer = pipe.tokenizer
    system, suffix = pipe.prompt_template_encode.split("{}")
    drop = pipe.prompt_template_encode_start_idx
    assert len(tokenizer(system).input_ids) == drop
    # What the pipeline keeps is the user's text and the assistant turn, nothing of the system.
    ids = tokenizer(pipe.prompt_template_encode.format("a red fox")).input_ids
    assert tokenizer.decode(ids[drop:]) == "a red fox" + suffix


def test_tokenizer_keeps_special_tokens_whole_and_round_trips_any_text(
    base: QwenImagePipeline,
) -> None:
    tokenizer: Qwen2Tokenizer = base.tokenizer
    for token in SPECIAL:
        assert len(tokenizer(token).input_ids) == 1, token
    text = "a cat, on a mat! café ☕ 猫"
    ids = tokenizer(text).input_ids
    assert tokenizer.unk_token_id not in ids  # byte-level: nothing is unknown
    assert tokenizer.decode(ids) == text


def test_text_encoder_knows_the_tokenizer_image_ids(edit: QwenImageEditPlusPipeline) -> None:
    config, ids = edit.text_encoder.config, edit.tokenizer.convert_tokens_to_ids
    assert config.image_token_id == ids("<|image_pad|>")
    assert config.vision_start_token_id == ids("<|vision_start|>")
    assert edit.text_encoder.get_input_embeddings().num_embeddings == len(edit.tokenizer)


def test_processor_shows_the_image_to_the_text_encoder_as_few_tokens(
    edit: QwenImageEditPlusPipeline,
) -> None:
    text = "Picture 1: <|vision_start|><|image_pad|><|vision_end|>turn left"
    inputs = edit.processor(text=[text], images=[source_image()], return_tensors="pt")
    image_tokens = int((inputs["input_ids"] == edit.text_encoder.config.image_token_id).sum())
    assert image_tokens == int(inputs["image_grid_thw"].prod()) // 4 <= 16


def test_text_to_image_renders_the_requested_size(base: QwenImagePipeline) -> None:
    image = base(
        "a lighthouse at dusk — «très» 🌅",
        width=128,
        height=96,
        num_inference_steps=2,
        true_cfg_scale=1.0,
        generator=torch.Generator().manual_seed(0),
    ).images[0]
    assert image.size == (128, 96) and image.mode == "RGB"
    assert pixels(image).std() > 0


def test_edit_renders_the_requested_size_from_another_sized_image(
    edit: QwenImageEditPlusPipeline,
) -> None:
    def view(seed: int, prompt: str = "Rotate the camera 45 degrees to the left.") -> np.ndarray:
        image = edit(
            image=[source_image()],
            prompt=prompt,
            negative_prompt=" ",
            true_cfg_scale=4.0,  # true classifier-free guidance: a second transformer pass
            width=64,
            height=96,
            num_inference_steps=2,
            generator=torch.Generator().manual_seed(seed),
        ).images[0]
        assert image.size == (64, 96)
        return pixels(image)

    first = view(1)
    assert first.std() > 0
    np.testing.assert_array_equal(first, view(1))
    assert not np.array_equal(first, view(2))
    assert not np.array_equal(first, view(1, "Turn the camera to a top-down view."))
