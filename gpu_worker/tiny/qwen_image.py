"""Tiny Qwen-Image checkpoints: text-to-image (`QwenImagePipeline`) and the multi-image edit model
(`QwenImageEditPlusPipeline`, Qwen-Image-Edit-2509's class) that renders camera-angle views.

Same classes as production, shaped for speed on a small CPU; the outputs are noise. Every component
is built here from a seed, the tokenizer and the vision processor included: no hub access at all.

* The edit pipeline always VAE-encodes its input image at about 1024x1024 (diffusers'
  ``VAE_IMAGE_SIZE``, whatever the output size), once per view, and its transformer attends over
  those 4096 image tokens besides the output's own. So the transformer is one block with a single
  32-channel head, and the VAE is as thin as the class allows: 4 channels and no residual blocks
  in the encoder (``num_res_blocks=0``; the decoder then has one per level). Its mid-block
  attention cannot be turned off: one head over every latent pixel, 16384 of them at 1024x1024,
  which alone costs ~0.4 s of CPU per encode. With 4 channels CPU `conv3d` takes its slow native
  path (oneDNN only starts at channels x 3 x height > 20480), but wider layers cost more still.
* The VAE keeps Qwen-Image's three downsamples (scale factor 8, size multiple 16), so latent shapes
  and the pipelines' size rules behave as in production; only the channels are tiny.
* The Qwen2.5-VL text encoder has a vision tower, because the edit pipeline shows it the input
  image; the image processor caps that image at 112x112, i.e. 16 image tokens in the prompt
  (production: ~196 for the 384x384 condition image).
* The tokenizer is byte-level BPE with merges learnt from the pipelines' own prompt templates, so
  each template's system prompt is exactly ``prompt_template_encode_start_idx`` tokens, as with
  Qwen's real vocabulary: the pipelines cut that many tokens off the text encoder's output, and
  what is left is the user's prompt, as in production. Any other text falls back to bytes.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from typing import cast

from diffusers import (
    AutoencoderKLQwenImage,
    FlowMatchEulerDiscreteScheduler,
    QwenImageEditPlusPipeline,
    QwenImagePipeline,
    QwenImageTransformer2DModel,
)
from tokenizers import trainers
from tokenizers.pre_tokenizers import ByteLevel
from transformers import (
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2Tokenizer,
    Qwen2VLImageProcessorPil,
    Qwen2VLProcessor,
    Qwen2VLVideoProcessor,
)

TEXT_DIM = 32  # text encoder hidden size == the transformer's joint_attention_dim
VAE_DIM = 4  # VAE channels at every level
LATENT_CHANNELS = 4  # VAE z_dim; the transformer sees 2x2 patches of it (in_channels = 16)
PATCH = 14  # vision patch size, as Qwen2.5-VL (the image processor must agree)

# Qwen2.5-VL's special tokens that the pipelines' templates and the processor use.
SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)


def _templates() -> list[str]:
    """The prompt templates of the installed pipelines (set in ``__init__``, so build one with no
    components), with the edit pipeline's image placeholder."""
    texts = []
    for cls in (QwenImagePipeline, QwenImageEditPlusPipeline):
        params = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
        # Set in __init__; diffusers' placeholder classes, all a type checker sees, declare nothing.
        texts.append(cls(**dict.fromkeys(params)).prompt_template_encode)  # type: ignore[union-attr]
    texts.append("Picture 1: <|vision_start|><|image_pad|><|vision_end|>")
    return texts


def tokenizer() -> Qwen2Tokenizer:
    # Qwen2Tokenizer's own normalizer and pre-tokenizer (Qwen's split regex, then byte-level), so
    # the merges are learnt on exactly the pieces it will later look up.
    base = Qwen2Tokenizer(vocab={c: i for i, c in enumerate(ByteLevel.alphabet())}, merges=[])
    backend = base.backend_tokenizer
    trainer = trainers.BpeTrainer(
        vocab_size=100_000,  # more than the templates can use: every word becomes one token
        min_frequency=1,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_templates(), trainer)
    model = json.loads(backend.to_str())["model"]
    tok = Qwen2Tokenizer(
        vocab=model["vocab"],
        # Pairs, as tokenizers writes them; transformers' hint admits only "a b" strings.
        merges=[tuple(m) for m in model["merges"]],  # type: ignore[misc]
        model_max_length=32768,
    )
    tok.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS[1:])})
    return tok


def image_processor() -> Qwen2VLImageProcessorPil:
    return Qwen2VLImageProcessorPil(
        patch_size=PATCH,
        temporal_patch_size=2,
        merge_size=2,
        # At most 112x112 pixels: 8x8 patches, merged 2x2 into 16 image tokens.
        size={"shortest_edge": 56 * 56, "longest_edge": 112 * 112},
    )


def processor(tok: Qwen2Tokenizer) -> Qwen2VLProcessor:
    return Qwen2VLProcessor(  # type: ignore[no-untyped-call]  # transformers: no hints
        image_processor=image_processor(),
        tokenizer=tok,
        video_processor=Qwen2VLVideoProcessor(),
    )


def text_encoder(tok: Qwen2Tokenizer) -> Qwen2_5_VLForConditionalGeneration:
    # One token in, one id out; transformers types the result int | list[int] for either input.
    ids = cast(Callable[[str], int], tok.convert_tokens_to_ids)
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(tok),
            "hidden_size": TEXT_DIM,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "max_position_embeddings": 4096,
            # Multimodal RoPE: (time, height, width) sections of the 8 rotary frequencies of a
            # 16-channel head (Qwen2.5-VL-7B: [16, 24, 24] of 64).
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 1e6,
                "mrope_section": [2, 3, 3],
            },
            "bos_token_id": ids("<|endoftext|>"),
            "eos_token_id": ids("<|im_end|>"),
            "pad_token_id": ids("<|endoftext|>"),
        },
        vision_config={
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "out_hidden_size": TEXT_DIM,
            "patch_size": PATCH,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 56,  # 2x2 merged tokens per window
            "fullatt_block_indexes": [1],
        },
        # The model finds the image in the prompt by these ids: they must match the tokenizer's.
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
    )
    return Qwen2_5_VLForConditionalGeneration(config)


def vae() -> AutoencoderKLQwenImage:
    return AutoencoderKLQwenImage(
        base_dim=VAE_DIM,
        z_dim=LATENT_CHANNELS,
        dim_mult=[1, 1, 1, 1],  # 4 blocks, 3 downsamples -> scale factor 8
        num_res_blocks=0,
        attn_scales=[],
        temperal_downsample=[False, True, True],
        latents_mean=[0.0] * LATENT_CHANNELS,
        latents_std=[1.0] * LATENT_CHANNELS,
    )


def transformer() -> QwenImageTransformer2DModel:
    return QwenImageTransformer2DModel(
        patch_size=2,
        in_channels=4 * LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        num_layers=1,
        attention_head_dim=32,
        num_attention_heads=1,
        joint_attention_dim=TEXT_DIM,
        axes_dims_rope=(8, 12, 12),  # (frame, height, width) rotary channels; they sum to 32
    )


def scheduler() -> FlowMatchEulerDiscreteScheduler:
    # Qwen-Image's scheduler_config.json: resolution-dependent exponential shift.
    return FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000,
        shift=1.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=0.9,
        base_image_seq_len=256,
        max_image_seq_len=8192,
        shift_terminal=0.02,
        time_shift_type="exponential",
    )


def build_base() -> QwenImagePipeline:
    # The VAE and text encoder are built first, in the same order as in build_edit, so both
    # checkpoints written from one seed share them bit for bit, as Qwen-Image and
    # Qwen-Image-Edit-2509 do (same VAE, same Qwen2.5-VL-7B-Instruct).
    tok = tokenizer()
    shared_vae, encoder = vae(), text_encoder(tok)
    return QwenImagePipeline(
        scheduler=scheduler(),
        vae=shared_vae,
        text_encoder=encoder,
        tokenizer=tok,
        transformer=transformer(),
    )


def build_edit() -> QwenImageEditPlusPipeline:
    tok = tokenizer()
    shared_vae, encoder = vae(), text_encoder(tok)
    return QwenImageEditPlusPipeline(
        scheduler=scheduler(),
        vae=shared_vae,
        text_encoder=encoder,
        tokenizer=tok,
        processor=processor(tok),
        transformer=transformer(),
    )
