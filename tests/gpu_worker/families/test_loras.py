"""A route's LoRAs are really loaded and change what it renders (peft, a LoRA saved to disk)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from diffusers import StableDiffusionPipeline
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict

from common.catalog import Lora, ModelRoute
from common.schemas import JobSpec, RenderParams, Task, utcnow
from gpu_worker.families import family


def write_lora(base_dir: Path, out_dir: Path) -> Path:
    pipe = StableDiffusionPipeline.from_pretrained(base_dir, local_files_only=True)
    torch.manual_seed(3)
    # Random (not zero) B matrices, so the adapter visibly changes the output.
    config = LoraConfig(
        r=4,
        lora_alpha=4,
        init_lora_weights=False,
        target_modules=["to_q", "to_k", "to_v", "to_out.0"],
    )
    pipe.unet.add_adapter(config)
    StableDiffusionPipeline.save_lora_weights(
        out_dir, unet_lora_layers=get_peft_model_state_dict(pipe.unet)
    )
    return out_dir


def render(route: ModelRoute) -> np.ndarray:
    sd = family("stable-diffusion")
    pipelines = sd.load(route, torch.float32, torch.device("cpu"))
    spec = JobSpec(
        job_id="lora",
        model=route.name,
        task=Task.T2I,
        created_at=utcnow(),
        params=RenderParams(
            prompt="a cat", width=64, height=64, num_inference_steps=2, guidance_scale=5.0, seed=1
        ),
    )
    (artifact,) = sd.render(pipelines, spec, None, lambda done, total: None)
    assert artifact.image is not None
    return np.asarray(artifact.image)


def test_a_configured_lora_changes_the_render(tiny_models: Path, tmp_path: Path) -> None:
    weights = tiny_models / "stable-diffusion"
    lora_dir = write_lora(weights, tmp_path / "lora")
    plain = ModelRoute(
        name="sd", family="stable-diffusion", weights=str(weights), tasks=[Task.T2I, Task.I2I]
    )
    styled = plain.model_copy(update={"loras": [Lora(weights=str(lora_dir), adapter_name="s")]})
    half = plain.model_copy(
        update={"loras": [Lora(weights=str(lora_dir), adapter_name="s", scale=0.5)]}
    )
    base, full, partial = render(plain), render(styled), render(half)
    assert not np.array_equal(base, full)
    assert not np.array_equal(full, partial)  # the scale is applied
    assert np.array_equal(base, render(plain))
