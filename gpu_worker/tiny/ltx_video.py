"""A tiny LTX-Video checkpoint (text-to-video and image-to-video), shaped for speed on a small CPU.

`make_tiny` writes a diffusers folder that loads like the real one (`LTXPipeline.from_pretrained`,
then `LTXImageToVideoPipeline.from_pipe`), with the same component classes: no hub access at all.
The outputs are noise. On 2 CPU cores (best of 3; 2-3x that while other work runs), 64x64 x 9
frames renders in ~0.02 s at 2-4 steps; 704x480 x 121 frames in 2.7 s at 4 steps and 7 s at 40,
~1 s of it the VAE decode and ~1.4 s the pipeline turning 121 float frames into PIL images; the
MP4 then takes 1.5 s to encode and weighs 20 MB (noise compresses badly).

* The VAE keeps LTX's compression, 32x spatially and 8x in time (a 4x4 patchify, then three
  blocks that each halve height, width and frames), so the pipelines' rules hold as in production:
  sides a multiple of 32, ``num_frames = 8k + 1``. Only the channels are tiny. Like LTX 0.9.1+
  its decoder is timestep-conditioned, so the family's ``decode_timestep`` path runs in tests.
* The VAE decoder's last level runs at full frame count and a quarter of the resolution: at
  704x480 x 121 frames, 2.5 M voxels per 3x3x3 convolution, most of the decode's cost. So no
  resnet runs at that level (``layers_per_block[0] == 0``) and it has 4 channels; the output
  convolution (to 48 = 3 colours x 4x4 patch channels, fixed by the patch size) is what is left.
* The transformer is a single block with a single 32-channel head. Its self-attention spans every
  latent voxel (5280 tokens at 704x480 x 121 frames); on a CPU its cost is mostly the 5280x5280
  score matrix each head builds, so heads are what to save: two 32-channel heads took 0.29 s per
  step at that size, one 0.13 s (a step runs the prompt and the negative prompt together).
* The T5 tokenizer is a character-level Unigram vocabulary (ASCII and Latin letters) built here.
  transformers 5 rebuilds a `T5Tokenizer` from the vocabulary in tokenizer.json when loading, with
  its own pre-tokenizer and ``byte_fallback=False``, so a custom pipeline (byte fallback, say)
  would not survive the round trip; this vocabulary does. Other characters (emoji, CJK) become
  ``<unk>``, as with the real T5 vocabulary.
"""

from __future__ import annotations

from diffusers import (
    AutoencoderKLLTXVideo,
    FlowMatchEulerDiscreteScheduler,
    LTXPipeline,
    LTXVideoTransformer3DModel,
)
from transformers import T5Config, T5EncoderModel, T5Tokenizer

MAX_TOKENS = 128  # LTXPipeline's default max_sequence_length; the tokenizer pads to it
TEXT_DIM = 32  # T5 hidden size == the transformer's caption_channels
LATENT_CHANNELS = 8  # production: 128
# One flag per VAE block: each halves height, width and frames. With the 4x4 patchify that makes
# the production 32x spatial and 8x temporal compression.
SCALING = (True, True, True)


def _vocabulary() -> list[tuple[str, float]]:
    """Unigram pieces: T5's special tokens first (their ids, 0-2, are T5's), then characters."""
    specials = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    # "▁" is SentencePiece's word-start mark: T5's pre-tokenizer puts one before every word.
    chars = ["▁", *map(chr, range(ord("!"), ord("~") + 1)), *map(chr, range(0xA1, 0x250))]
    chars += list("–—‘’“”…•€™")
    return specials + [(c, -1.0) for c in chars]


def tokenizer() -> T5Tokenizer:
    # transformers 5: T5Tokenizer is tokenizers-backed (T5TokenizerFast is only a runtime alias
    # of it); `vocab=` takes (piece, score) pairs. No sentinel <extra_id_*> tokens: nothing here
    # uses them.
    return T5Tokenizer(vocab=_vocabulary(), extra_ids=0, model_max_length=MAX_TOKENS)


def _text_encoder(vocab_size: int) -> T5EncoderModel:
    config = T5Config(
        vocab_size=vocab_size,
        d_model=TEXT_DIM,
        d_kv=16,
        d_ff=64,
        num_layers=1,
        num_heads=2,
        # T5's relative position buckets; small is fine for 128 tokens.
        relative_attention_num_buckets=8,
        relative_attention_max_distance=32,
    )
    return T5EncoderModel(config)


def _transformer() -> LTXVideoTransformer3DModel:
    heads, head_dim = 1, 32
    return LTXVideoTransformer3DModel(
        in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        num_attention_heads=heads,
        attention_head_dim=head_dim,
        cross_attention_dim=heads * head_dim,  # production: equal to the inner width too
        num_layers=1,
        caption_channels=TEXT_DIM,
    )


def _vae() -> AutoencoderKLLTXVideo:
    blocks = len(SCALING)
    # One width throughout: with timestep conditioning, a decoder block that changes width runs its
    # first resnet on the raw timestep and fails (diffusers 0.42; real checkpoints never do that).
    channels = (4, 4, 4)
    layers = (0, 1, 1, 1)  # per block, then the mid block; none at the costly first level
    return AutoencoderKLLTXVideo(
        latent_channels=LATENT_CHANNELS,
        block_out_channels=channels,
        decoder_block_out_channels=channels,
        down_block_types=("LTXVideoDownBlock3D",) * blocks,
        downsample_type=("conv",) * blocks,
        layers_per_block=layers,
        decoder_layers_per_block=layers,
        spatio_temporal_scaling=SCALING,
        decoder_spatio_temporal_scaling=SCALING,
        decoder_inject_noise=(False,) * (blocks + 1),
        upsample_residual=(False,) * blocks,
        upsample_factor=(1,) * blocks,
        timestep_conditioning=True,  # LTX 0.9.1+: the decoder takes a timestep
    )


def _scheduler() -> FlowMatchEulerDiscreteScheduler:
    # LTX-Video's own scheduler config: resolution-dependent shift, stretched to end at 0.1.
    return FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000,
        shift=1.0,
        use_dynamic_shifting=True,
        base_shift=0.95,
        max_shift=2.05,
        base_image_seq_len=1024,
        max_image_seq_len=4096,
        shift_terminal=0.1,
    )


def build() -> LTXPipeline:
    tok = tokenizer()
    return LTXPipeline(
        scheduler=_scheduler(),
        vae=_vae(),
        text_encoder=_text_encoder(len(tok)),
        tokenizer=tok,
        transformer=_transformer(),
    )
