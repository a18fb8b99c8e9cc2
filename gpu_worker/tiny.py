"""Tiny random-weight checkpoints for tests and the CPU demo.

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

from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

FAMILIES: tuple[str, ...] = ("stable-diffusion",)

MAX_TOKENS = 77  # CLIP's context length; the text encoder's position table must match it.
TEXT_DIM = 32  # text encoder hidden size == UNet cross_attention_dim


def _bytes_to_unicode() -> list[str]:
    """The 256 printable stand-ins GPT-2/CLIP byte-level BPE uses for the 256 byte values."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += list(range(ord("®"), ord("ÿ") + 1))
    extra = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(extra)) for b in range(256)]


def _tokenizer() -> CLIPTokenizer:
    # Byte-level vocabulary with no merges: every UTF-8 byte is a token (plus its end-of-word
    # variant), so any prompt, accented or emoji, tokenizes without unknown tokens.
    chars = _bytes_to_unicode()
    tokens = [*chars, *(c + "</w>" for c in chars), "<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    # transformers 5 takes the vocabulary itself; the old `vocab_file=`/`merges_file=` keywords
    # are silently ignored there, leaving a 3-token vocabulary.
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=MAX_TOKENS)


def _text_encoder(tokenizer: CLIPTokenizer) -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=TEXT_DIM,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=MAX_TOKENS,
        # The pooled output is read at the first EOS, so the ids must match the tokenizer's.
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(config)


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


def _vae() -> AutoencoderKL:
    return AutoencoderKL(
        block_out_channels=(8, 8, 16, 16),  # 4 blocks -> 3 downsamples -> scale factor 8
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=512,
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


def make_tiny(family: str, out_dir: Path, *, seed: int = 0) -> Path:
    """Write a tiny random checkpoint of `family` to `out_dir` and return `out_dir`."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")
    tokenizer = _tokenizer()
    # Seeded weights, without disturbing the caller's global RNG (tests call this mid-session).
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        pipe = StableDiffusionPipeline(
            vae=_vae(),
            text_encoder=_text_encoder(tokenizer),
            tokenizer=tokenizer,
            unet=_unet(),
            scheduler=_scheduler(),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    out_dir = Path(out_dir)
    pipe.save_pretrained(out_dir)
    return out_dir


def make_all(root: Path) -> dict[str, Path]:
    """Write one tiny checkpoint per family under `root/<family>`."""
    return {family: make_tiny(family, Path(root) / family) for family in FAMILIES}
