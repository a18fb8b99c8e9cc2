"""The tiny FLUX checkpoint loads through the production loader, tokenizers included, and renders
seed-dependent images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import FluxImg2ImgPipeline, FluxPipeline
from PIL import Image
from transformers import T5TokenizerFast

from gpu_worker.tiny import make_tiny
from gpu_worker.tiny.flux import T5_MAX_TOKENS, t5_tokenizer

PROMPT = "a lighthouse at dusk, oil on canvas — «très» café ☕ 猫"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny("flux", tmp_path_factory.mktemp("tiny") / "flux")


@pytest.fixture(scope="module")
def pipe(checkpoint: Path) -> FluxPipeline:
    # local_files_only: a missing file must fail here, not be fetched from the hub.
    pipe = FluxPipeline.from_pretrained(checkpoint, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def render(pipe: FluxPipeline, prompt: str, seed: int) -> Image.Image:
    return pipe(
        prompt,
        width=128,
        height=96,
        num_inference_steps=2,
        guidance_scale=3.5,
        generator=torch.Generator().manual_seed(seed),
        max_sequence_length=T5_MAX_TOKENS,
    ).images[0]


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def test_folder_has_flux_components_and_both_tokenizers(checkpoint: Path) -> None:
    index = json.loads((checkpoint / "model_index.json").read_text())
    assert index["_class_name"] == "FluxPipeline"
    assert index["transformer"] == ["diffusers", "FluxTransformer2DModel"]
    assert index["text_encoder_2"] == ["transformers", "T5EncoderModel"]
    for folder in ("tokenizer", "tokenizer_2"):
        assert (checkpoint / folder / "tokenizer.json").is_file()
        assert (checkpoint / folder / "tokenizer_config.json").is_file()


def test_loaded_pipeline_has_flux_shapes(pipe: FluxPipeline) -> None:
    assert isinstance(pipe.tokenizer_2, T5TokenizerFast)
    assert pipe.vae_scale_factor == 8  # so sizes are multiples of 16 as with the real model
    assert pipe.transformer.config.in_channels == 4 * pipe.vae.config.latent_channels == 64
    assert pipe.scheduler.config.use_dynamic_shifting


def test_saved_t5_tokenizer_round_trips_non_ascii_text(checkpoint: Path) -> None:
    saved = T5TokenizerFast.from_pretrained(checkpoint / "tokenizer_2")
    assert saved.model_max_length == T5_MAX_TOKENS
    ids = saved(PROMPT).input_ids
    assert ids == t5_tokenizer()(PROMPT).input_ids  # the reload rebuilds the same tokenizer
    assert ids[-1] == saved.eos_token_id
    # Latin-1 is in the vocabulary; the dash, the emoji and the CJK character are not: they
    # become <unk>, as in the real T5 (no byte fallback), rather than failing.
    assert ids.count(saved.unk_token_id) == 3
    decoded = saved.decode(ids, skip_special_tokens=True)
    assert decoded.split() == "a lighthouse at dusk, oil on canvas «très» café".split()


def test_text_to_image_renders_the_requested_size(pipe: FluxPipeline) -> None:
    image = render(pipe, PROMPT, seed=0)
    assert image.size == (128, 96)
    assert image.mode == "RGB"
    assert pixels(image).std() > 0  # not a blank frame


def test_same_seed_same_pixels_other_seed_or_prompt_differs(pipe: FluxPipeline) -> None:
    first = pixels(render(pipe, "a red fox", seed=1))
    np.testing.assert_array_equal(first, pixels(render(pipe, "a red fox", seed=1)))
    assert not np.array_equal(first, pixels(render(pipe, "a red fox", seed=2)))
    assert not np.array_equal(first, pixels(render(pipe, "a blue whale", seed=1)))


def test_image_to_image_shares_the_weights(pipe: FluxPipeline) -> None:
    img2img = FluxImg2ImgPipeline.from_pipe(pipe)
    assert img2img.transformer is pipe.transformer
    source = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 96, 3), np.uint8))
    out = img2img(
        "a watercolor",
        image=source,
        width=96,  # Flux's img2img defaults to 1024x1024, not to the input's size
        height=64,
        strength=0.75,
        num_inference_steps=4,
        generator=torch.Generator().manual_seed(0),
        max_sequence_length=T5_MAX_TOKENS,
    ).images[0]
    assert out.size == source.size == (96, 64)
    assert pixels(out).std() > 0


def test_checkpoint_seed_sets_the_weights(tmp_path: Path) -> None:
    a = make_tiny("flux", tmp_path / "a", seed=0)
    b = make_tiny("flux", tmp_path / "b", seed=0)
    c = make_tiny("flux", tmp_path / "c", seed=1)
    weights = Path("transformer") / "diffusion_pytorch_model.safetensors"
    assert (a / weights).read_bytes() == (b / weights).read_bytes()
    assert (a / weights).read_bytes() != (c / weights).read_bytes()
