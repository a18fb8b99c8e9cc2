"""A tiny Stable Diffusion XL checkpoint, shaped for speed on a small CPU.

`make_tiny` writes a diffusers folder that loads like stabilityai/stable-diffusion-xl-base-1.0
(`StableDiffusionXLPipeline.from_pretrained`, then `StableDiffusionXLImg2ImgPipeline.from_pipe`):
two CLIP text encoders with their tokenizers (the second with its pooled projection), a UNet
conditioned on both (`addition_embed_type="text_time"`), SDXL's VAE scale and Euler scheduler.
Every component is built here from a seed: no hub access at all.

The shapes are chosen for speed on a small CPU, not for image quality (the outputs are noise);
measured on 2 cores, the demo's 1024x768 at 50 steps takes about 2.2 s (the UNet ~45 ms a step
for the guided pair, the VAE decode ~0.25 s), 256x256 at 4 steps about 0.1 s:

* The VAE is the tiny SD one (`gpu_worker.tiny.stable_diffusion.vae`): four blocks, so the scale
  factor is 8 as in SDXL, with SDXL's latent scaling factor.
* The UNet has four levels where SDXL has three, so that it can attend only at latent / 8 (192
  tokens at 1024x768), like the tiny SD one. SDXL's own three levels put the lowest at latent / 4
  (768 tokens): attending there took ~93 ms a step instead of ~45, over twice as slow. CPU
  attention cost grows with the square of the token count.
* The cross-attention width is both encoders' hidden sizes side by side (32 + 32; SDXL 768 +
  1280), and the added embedding takes six size/crop numbers of `TIME_DIM` channels each plus
  the second encoder's pooled projection, as SDXL's `projection_class_embeddings_input_dim`.
"""

from __future__ import annotations

from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

from gpu_worker.tiny import clip
from gpu_worker.tiny.clip import TEXT_DIM
from gpu_worker.tiny.stable_diffusion import vae

# Each size/crop conditioning number (original size, crop corner, target size: six in all) is
# embedded in this many channels; SDXL base uses 256.
TIME_DIM = 8


def _unet() -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=128,  # default output 1024x1024, like SDXL
        block_out_channels=(8, 16, 32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"),
        # Both encoders' penultimate hidden states, concatenated (SDXL: 768 + 1280).
        cross_attention_dim=2 * TEXT_DIM,
        attention_head_dim=2,  # heads (diffusers issue #2011): 64 / 2 = 32 channels each
        use_linear_projection=True,
        norm_num_groups=8,
        addition_embed_type="text_time",
        addition_time_embed_dim=TIME_DIM,
        # Six embedded size/crop numbers and the second encoder's pooled projection.
        projection_class_embeddings_input_dim=6 * TIME_DIM + TEXT_DIM,
    )


def _scheduler() -> EulerDiscreteScheduler:
    # stabilityai/stable-diffusion-xl-base-1.0's scheduler: one UNet call per step.
    return EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        timestep_spacing="leading",
    )


def build() -> StableDiffusionXLPipeline:
    tokenizer, tokenizer_2 = clip.tokenizer(), clip.tokenizer()
    return StableDiffusionXLPipeline(
        vae=vae(sample_size=1024, scaling_factor=0.13025),
        text_encoder=clip.text_encoder(tokenizer),
        text_encoder_2=clip.text_encoder_with_projection(tokenizer_2),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=_unet(),
        scheduler=_scheduler(),
        add_watermarker=False,
    )
