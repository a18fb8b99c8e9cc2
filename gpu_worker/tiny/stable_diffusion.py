"""A tiny Stable Diffusion checkpoint, shaped for speed on a small CPU.

`make_tiny` writes a diffusers folder that loads through the same code path as a real model
(`StableDiffusionPipeline.from_pretrained`, then `StableDiffusionImg2ImgPipeline.from_pipe`), so
the worker, the tests and the demo exercise production loading without downloading anything.
Every component, the tokenizer included, is built here from a seed: no hub access at all.

The shapes are chosen for speed on a small CPU, not for image quality (the outputs are noise);
the demo's 1024x768 at 50 steps takes about 2.5 s on 2 cores, 256x256 at 4 steps about 0.1 s:

* The VAE keeps four blocks, so its scale factor stays 8 like real Stable Diffusion and latent
  shapes and the pipelines' size rules behave as in production; only the channels are tiny. Its
  mid-block attention is off: at 1024x768 that would be a 12288-token self-attention per decode.
* The UNet keeps SD's four levels (three downsamples) but attends only at the lowest one, latent
  / 8 (192 tokens at 1024x768). CPU `scaled_dot_product_attention` cost grows with the square of
  the token count: attending one level higher (768 tokens) made each step over twice as slow, and
  SD's own layout (attention at the top three levels) took ~5 s per step at 1024x768.
* A few wide heads (32 channels) rather than many narrow ones: at these sizes CPU attention cost
  is mostly per head, and 32 heads of 2 channels made each attention call ~10x slower.
"""

from __future__ import annotations

from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

from gpu_worker.tiny import clip
from gpu_worker.tiny.clip import TEXT_DIM


def _unet() -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=64,  # default output 512x512, like SD 1.x
        block_out_channels=(8, 16, 32, 64),
        layers_per_block=1,
        # Attention only at the lowest resolution (last down block, mid block, first up block).
        down_block_types=("DownBlock2D", "DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"),
        cross_attention_dim=TEXT_DIM,
        # Despite its name this is the number of heads (diffusers issue #2011): 64 / 2 = 32
        # channels per head. (Passing `num_attention_heads` instead raises.)
        attention_head_dim=2,
        norm_num_groups=8,
    )


def vae(*, sample_size: int = 512, scaling_factor: float = 0.18215) -> AutoencoderKL:
    """Also SDXL's: the same architecture, with its own latent scale."""
    return AutoencoderKL(
        block_out_channels=(8, 8, 16, 16),  # 4 blocks -> 3 downsamples -> scale factor 8
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=sample_size,
        scaling_factor=scaling_factor,
        mid_block_add_attention=False,
    )


def _scheduler() -> DDIMScheduler:
    # Stable Diffusion 1.x's noise schedule. DDIM runs exactly one UNet call per step for both
    # text-to-image and image-to-image (PNDM adds a warm-up call).
    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )


def build() -> StableDiffusionPipeline:
    tokenizer = clip.tokenizer()
    return StableDiffusionPipeline(
        vae=vae(),
        text_encoder=clip.text_encoder(tokenizer),
        tokenizer=tokenizer,
        unet=_unet(),
        scheduler=_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
