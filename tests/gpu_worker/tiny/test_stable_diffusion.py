"""The tiny checkpoints load through the production loader and render seed-dependent images."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionPipeline
from PIL import Image
from transformers import CLIPTokenizer

from gpu_worker.tiny import FAMILIES, make_all, make_tiny


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_all(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def pipe(checkpoints: dict[str, Path]) -> StableDiffusionPipeline:
    # local_files_only is the per-call form of HF_HUB_OFFLINE=1 (the env var is read by
    # huggingface_hub at import time, so setting it inside a test would be too late).
    pipe = StableDiffusionPipeline.from_pretrained(
        checkpoints["stable-diffusion"], local_files_only=True
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def render(
    pipe: StableDiffusionPipeline, prompt: str, seed: int, width: int = 128, height: int = 96
) -> Image.Image:
    return pipe(
        prompt,
        width=width,
        height=height,
        num_inference_steps=2,
        guidance_scale=7.5,
        generator=torch.Generator().manual_seed(seed),
    ).images[0]


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def test_make_all_writes_a_loadable_folder_per_family(checkpoints: dict[str, Path]) -> None:
    assert set(checkpoints) == set(FAMILIES)
    for family, path in checkpoints.items():
        assert path.name == family
        assert (path / "model_index.json").is_file()
        assert (path / "tokenizer" / "tokenizer.json").is_file()
        assert (path / "tokenizer" / "tokenizer_config.json").is_file()


def test_make_all_writes_only_the_checkpoints_a_folder_lacks(checkpoints: dict[str, Path]) -> None:
    # A folder written before SDXL was added: the new checkpoint is written, the others kept.
    shutil.rmtree(checkpoints["stable-diffusion-xl"])
    kept = checkpoints["stable-diffusion"] / "unet" / "diffusion_pytorch_model.safetensors"
    written_ns = kept.stat().st_mtime_ns
    assert make_all(checkpoints["stable-diffusion"].parent) == checkpoints
    assert (checkpoints["stable-diffusion-xl"] / "model_index.json").is_file()
    assert kept.stat().st_mtime_ns == written_ns


def test_saved_tokenizer_round_trips_any_text(checkpoints: dict[str, Path]) -> None:
    tokenizer = CLIPTokenizer.from_pretrained(checkpoints["stable-diffusion"] / "tokenizer")
    prompt = "a cat, on a mat! café ☕ 猫"
    ids = tokenizer(prompt).input_ids
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert tokenizer.unk_token_id not in ids[1:-1]  # byte-level: nothing is unknown
    assert tokenizer.decode(ids, skip_special_tokens=True) == "a cat , on a mat ! café ☕ 猫"


def test_text_to_image_renders_the_requested_size(pipe: StableDiffusionPipeline) -> None:
    image = render(pipe, "a lighthouse at dusk, oil on canvas — «très» 🌅", seed=0)
    assert image.size == (128, 96)
    assert image.mode == "RGB"
    assert pixels(image).std() > 0  # not a blank frame


def test_same_seed_same_pixels_other_seed_or_prompt_differs(
    pipe: StableDiffusionPipeline,
) -> None:
    first = pixels(render(pipe, "a red fox", seed=1))
    np.testing.assert_array_equal(first, pixels(render(pipe, "a red fox", seed=1)))
    assert not np.array_equal(first, pixels(render(pipe, "a red fox", seed=2)))
    assert not np.array_equal(first, pixels(render(pipe, "a blue whale", seed=1)))


def test_image_to_image_keeps_the_input_size(pipe: StableDiffusionPipeline) -> None:
    img2img = StableDiffusionImg2ImgPipeline.from_pipe(pipe)
    source = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 96, 3), np.uint8))
    out = img2img(
        "a watercolor",
        image=source,
        strength=0.75,
        num_inference_steps=4,
        generator=torch.Generator().manual_seed(0),
    ).images[0]
    assert out.size == source.size == (96, 64)
    assert pixels(out).std() > 0


def test_checkpoint_seed_sets_the_weights_and_spares_the_global_rng(tmp_path: Path) -> None:
    rng_before = torch.random.get_rng_state()
    a = make_tiny("stable-diffusion", tmp_path / "a", seed=0)
    assert torch.equal(torch.random.get_rng_state(), rng_before)
    b = make_tiny("stable-diffusion", tmp_path / "b", seed=0)
    c = make_tiny("stable-diffusion", tmp_path / "c", seed=1)
    weights = Path("unet") / "diffusion_pytorch_model.safetensors"
    assert (a / weights).read_bytes() == (b / weights).read_bytes()
    assert (a / weights).read_bytes() != (c / weights).read_bytes()


def test_unknown_family_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown checkpoint"):
        make_tiny("stable-cascade", tmp_path)
