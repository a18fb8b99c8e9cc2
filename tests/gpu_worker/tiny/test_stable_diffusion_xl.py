"""The tiny SDXL checkpoint loads offline with SDXL's shapes, two tokenizers included, and renders
seed-dependent images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionXLPipeline
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from gpu_worker.tiny import make_tiny


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny("stable-diffusion-xl", tmp_path_factory.mktemp("tiny") / "sdxl")


@pytest.fixture(scope="module")
def pipe(checkpoint: Path) -> StableDiffusionXLPipeline:
    # local_files_only: a missing file must fail here, not be fetched from the hub.
    pipe = StableDiffusionXLPipeline.from_pretrained(checkpoint, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_folder_has_both_text_encoders_and_tokenizers(checkpoint: Path) -> None:
    index = json.loads((checkpoint / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionXLPipeline"
    assert index["text_encoder"] == ["transformers", "CLIPTextModel"]
    assert index["text_encoder_2"] == ["transformers", "CLIPTextModelWithProjection"]
    for folder in ("tokenizer", "tokenizer_2"):
        assert (checkpoint / folder / "tokenizer.json").is_file()


def test_loaded_pipeline_has_sdxl_shapes(pipe: StableDiffusionXLPipeline) -> None:
    assert isinstance(pipe.tokenizer_2, CLIPTokenizer)
    assert type(pipe.text_encoder) is CLIPTextModel
    assert type(pipe.text_encoder_2) is CLIPTextModelWithProjection
    assert pipe.vae_scale_factor == 8  # so sizes and latents behave as with the real model
    unet = pipe.unet.config
    assert unet.addition_embed_type == "text_time"
    # The UNet attends over both encoders' hidden states side by side, and its added embedding
    # takes the six size/crop numbers and the second encoder's pooled projection.
    hidden = pipe.text_encoder.config.hidden_size + pipe.text_encoder_2.config.hidden_size
    assert unet.cross_attention_dim == hidden
    pooled = pipe.text_encoder_2.config.projection_dim
    assert unet.projection_class_embeddings_input_dim == 6 * unet.addition_time_embed_dim + pooled


def test_renders_seed_dependent_images_of_the_requested_size(
    pipe: StableDiffusionXLPipeline,
) -> None:
    # Sizes, batches and seeds through the worker's own calls: tests/gpu_worker/families.
    first, again, other = (
        pipe(
            "a lighthouse at dusk, oil on canvas — «très» café ☕ 猫",
            width=128,
            height=96,
            num_inference_steps=2,
            guidance_scale=5.0,
            generator=torch.Generator().manual_seed(seed),
        ).images[0]
        for seed in (0, 0, 1)
    )
    assert first.size == (128, 96) and first.mode == "RGB"
    assert np.asarray(first).std() > 0  # not a blank frame
    assert np.array_equal(np.asarray(first), np.asarray(again))
    assert not np.array_equal(np.asarray(first), np.asarray(other))
