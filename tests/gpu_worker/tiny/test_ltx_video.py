"""The tiny LTX-Video checkpoint loads like the real one and keeps its size and frame rules."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import (
    AutoencoderKLLTXVideo,
    FlowMatchEulerDiscreteScheduler,
    LTXPipeline,
    LTXVideoTransformer3DModel,
)
from PIL import Image
from transformers import T5EncoderModel, T5TokenizerFast

from gpu_worker.tiny import make_tiny
from gpu_worker.tiny.ltx_video import tokenizer


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny("ltx-video", tmp_path_factory.mktemp("ltx-video"))


@pytest.fixture(scope="module")
def pipe(checkpoint: Path) -> LTXPipeline:
    pipe = LTXPipeline.from_pretrained(checkpoint, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def render(pipe: LTXPipeline, seed: int, **kwargs: object) -> list[Image.Image]:
    options: dict[str, object] = {
        "prompt": "a red fox running through snow",
        "width": 64,
        "height": 64,
        "num_frames": 9,
        "num_inference_steps": 2,
        "generator": torch.Generator().manual_seed(seed),
        **kwargs,
    }
    frames: list[Image.Image] = pipe(**options).frames[0]
    return frames


def test_the_folder_holds_the_production_component_classes(pipe: LTXPipeline) -> None:
    assert isinstance(pipe.transformer, LTXVideoTransformer3DModel)
    assert isinstance(pipe.vae, AutoencoderKLLTXVideo)
    assert isinstance(pipe.text_encoder, T5EncoderModel)
    assert isinstance(pipe.tokenizer, T5TokenizerFast)
    assert isinstance(pipe.scheduler, FlowMatchEulerDiscreteScheduler)
    assert pipe.scheduler.config.use_dynamic_shifting
    assert pipe.scheduler.config.shift_terminal == 0.1


def test_the_vae_compresses_and_decodes_like_production(pipe: LTXPipeline) -> None:
    assert pipe.vae_spatial_compression_ratio == 32
    assert pipe.vae_temporal_compression_ratio == 8
    assert pipe.vae.config.timestep_conditioning  # LTX 0.9.1+: decode_timestep applies


def test_the_saved_tokenizer_matches_the_built_one(checkpoint: Path) -> None:
    # transformers 5 rebuilds a T5 tokenizer from its vocabulary when loading: check that what
    # comes back tokenizes like what was saved.
    loaded = T5TokenizerFast.from_pretrained(checkpoint / "tokenizer")
    prompt = "A café in Zürich — “golden hour”, 35mm"
    ids = loaded(prompt).input_ids
    assert ids == tokenizer()(prompt).input_ids
    assert ids[-1] == loaded.eos_token_id
    assert loaded.unk_token_id not in ids
    assert loaded.decode(ids, skip_special_tokens=True) == prompt
    assert loaded.pad_token_id == 0 and loaded.model_max_length == 128
    assert loaded.unk_token_id in loaded("猫 🦊").input_ids  # unknown, like real T5, not an error


def test_video_has_the_requested_frames_and_size(pipe: LTXPipeline) -> None:
    frames = render(pipe, seed=0, width=96, height=64, num_frames=17)
    assert len(frames) == 17
    assert {frame.size for frame in frames} == {(96, 64)}
    assert np.asarray(frames[0], dtype=np.int16).std() > 0  # not a blank frame


def test_same_seed_same_video_other_seed_differs(pipe: LTXPipeline) -> None:
    first = np.stack([np.asarray(f) for f in render(pipe, seed=1)])
    again = np.stack([np.asarray(f) for f in render(pipe, seed=1)])
    other = np.stack([np.asarray(f) for f in render(pipe, seed=2)])
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
