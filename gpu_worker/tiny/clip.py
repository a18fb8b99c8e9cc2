"""A tiny CLIP text tower with a byte-level tokenizer built locally: no vocabulary download."""

from __future__ import annotations

from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

MAX_TOKENS = 77  # CLIP's context length; the text encoder's position table must match it.
TEXT_DIM = 32  # text encoder hidden size == the denoiser's cross-attention width


def _bytes_to_unicode() -> list[str]:
    """The 256 printable stand-ins GPT-2/CLIP byte-level BPE uses for the 256 byte values."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += list(range(ord("®"), ord("ÿ") + 1))
    extra = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(extra)) for b in range(256)]


def tokenizer() -> CLIPTokenizer:
    # Byte-level vocabulary with no merges: every UTF-8 byte is a token (plus its end-of-word
    # variant), so any prompt, accented or emoji, tokenizes without unknown tokens.
    chars = _bytes_to_unicode()
    tokens = [*chars, *(c + "</w>" for c in chars), "<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    # transformers 5 takes the vocabulary itself; the old `vocab_file=`/`merges_file=` keywords
    # are silently ignored there, leaving a 3-token vocabulary.
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=MAX_TOKENS)


def _config(tokenizer: CLIPTokenizer, hidden_size: int) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=MAX_TOKENS,
        # The pooled output is read at the first EOS, so the ids must match the tokenizer's.
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        # The projected pooled output (SDXL's second encoder) has the hidden size too.
        projection_dim=hidden_size,
    )


def text_encoder(tokenizer: CLIPTokenizer, *, hidden_size: int = TEXT_DIM) -> CLIPTextModel:
    return CLIPTextModel(_config(tokenizer, hidden_size))


def text_encoder_with_projection(
    tokenizer: CLIPTokenizer, *, hidden_size: int = TEXT_DIM
) -> CLIPTextModelWithProjection:
    """The text tower with its projected pooled output (SDXL's second encoder, OpenCLIP bigG)."""
    return CLIPTextModelWithProjection(_config(tokenizer, hidden_size))
