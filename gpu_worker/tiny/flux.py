"""A tiny FLUX.1-dev-shaped checkpoint, shaped for speed on a small CPU.

`make_tiny` writes a diffusers folder that loads through the same code path as the real model
(`FluxPipeline.from_pretrained`, then `FluxImg2ImgPipeline.from_pipe`), with the same component
classes as FLUX.1-dev's `model_index.json`: CLIP and T5 text towers and tokenizers, a
`FluxTransformer2DModel`, a 16-channel `AutoencoderKL` and a flow-matching scheduler. Every
component, both tokenizers included, is built here from a seed: no hub access at all.

What stays as in the real model, because the pipelines' size and sequence rules depend on it:

* VAE scale factor 8 (four blocks) and 16 latent channels, packed in 2x2 patches into 64-wide
  image tokens (`in_channels=64`), so sizes must be multiples of 16 as in production.
* The scheduler config (dynamic shifting from the image token count) and guidance embedding.
* T5's tokenizer class and its 512-token limit, so the family's `max_sequence_length` is 512 for
  the tiny checkpoint and the real one alike.

What is tiny: the joint attention runs over every image token (latent / 2 per side: 3072 at
1024x768) plus all 512 padded text tokens, and on a CPU it is ~80% of a step at that size even
with one double-stream and one single-stream block and a single 32-channel head (two 16-channel
heads were ~25% slower: CPU attention cost is mostly per head). A 1024x768, 28-step render then
takes ~1.2-1.3 s on 2 idle cores (~2.5 s on one: 60-85 ms a step plus ~0.5 s of VAE decode),
and 256x256 at 4 steps ~0.05-0.1 s. Attention is quadratic in the pixel count, so 2048x2048
costs ~1 s a step on one core.
"""

from __future__ import annotations

from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
)
from transformers import T5Config, T5EncoderModel, T5Tokenizer

from gpu_worker.tiny import clip

LATENT_CHANNELS = 16  # FLUX's VAE; the transformer sees 2x2 patches of them: 64 channels
T5_DIM = 32  # T5 hidden size == the transformer's `joint_attention_dim`
T5_MAX_TOKENS = 512  # FLUX.1-dev's tokenizer_2 limit, and the most FluxPipeline accepts
HEADS = 1
HEAD_DIM = 32  # split among the rotary axes (index, row, column) below


def t5_tokenizer() -> T5Tokenizer:
    """A character-level SentencePiece-style (Unigram) vocabulary: printable ASCII and Latin-1/
    Latin Extended-A, each also as a word-initial piece (``▁x``) so a word costs one token less.

    Characters outside it become ``<unk>``, as with the real T5 v1.1 vocabulary (the real
    tokenizer has no byte fallback either); the CLIP tower is byte-level and still sees them.
    """
    chars = [chr(c) for c in (*range(0x21, 0x7F), *range(0xA1, 0x180))]
    # Unigram picks the segmentation with the highest total score: whole "▁x" pieces beat
    # "▁" + "x", and the lone "▁" is only used before an unknown character.
    pieces = [("▁" + c, -1.0) for c in chars] + [(c, -2.0) for c in chars]
    # T5's fixed special ids: <pad>=0, </s>=1, <unk>=2.
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -3.0), *pieces]
    # In transformers 5 `T5Tokenizer` (`T5TokenizerFast` is a runtime alias of it) is backed by
    # `tokenizers`; it saves a tokenizer.json and rebuilds its Unigram model from that vocabulary
    # on load. No sentinel `<extra_id_N>` tokens: they only matter for T5's span-corruption
    # training.
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=T5_MAX_TOKENS)


def t5_encoder(tokenizer: T5Tokenizer) -> T5EncoderModel:
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=T5_DIM,
        d_kv=16,
        d_ff=64,
        num_layers=2,
        num_heads=2,
        feed_forward_proj="gated-gelu",  # T5 v1.1, as FLUX uses
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return T5EncoderModel(config)


def _transformer() -> FluxTransformer2DModel:
    return FluxTransformer2DModel(
        patch_size=1,
        in_channels=LATENT_CHANNELS * 4,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=HEAD_DIM,
        num_attention_heads=HEADS,
        joint_attention_dim=T5_DIM,
        pooled_projection_dim=clip.TEXT_DIM,  # CLIP's pooled output
        guidance_embeds=True,  # FLUX.1-dev is guidance-distilled (schnell has no embedding)
        axes_dims_rope=(8, 12, 12),  # must sum to HEAD_DIM, like (16, 56, 56) for 128
    )


def _vae() -> AutoencoderKL:
    return AutoencoderKL(
        block_out_channels=(8, 8, 16, 16),  # 4 blocks -> 3 downsamples -> scale factor 8
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1,
        latent_channels=LATENT_CHANNELS,
        norm_num_groups=4,
        sample_size=1024,
        # FLUX's latent normalisation; the pipelines read both factors from this config.
        scaling_factor=0.3611,
        shift_factor=0.1159,
        use_quant_conv=False,
        use_post_quant_conv=False,
        # A 12288-token self-attention per decode at 1024x768: far slower than the rest.
        mid_block_add_attention=False,
    )


def _scheduler() -> FlowMatchEulerDiscreteScheduler:
    # FLUX.1-dev's scheduler_config.json: the shift grows with the image token count.
    return FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000,
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )


def build() -> FluxPipeline:
    tokenizer = clip.tokenizer()
    tokenizer_2 = t5_tokenizer()
    return FluxPipeline(
        scheduler=_scheduler(),
        vae=_vae(),
        text_encoder=clip.text_encoder(tokenizer),
        tokenizer=tokenizer,
        text_encoder_2=t5_encoder(tokenizer_2),
        tokenizer_2=tokenizer_2,
        transformer=_transformer(),
    )
