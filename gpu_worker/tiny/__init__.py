"""Tiny random-weight checkpoints for tests and the CPU demo.

Each checkpoint is a diffusers folder written with ``save_pretrained`` that loads through the same
code as a real model, so the worker, the tests and the demo exercise production loading without
downloading anything. Every component, tokenizers included, is built here from a seed.
The shapes are chosen for speed on a small CPU, not for image quality: the outputs are noise.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import torch

# Checkpoint name -> "module:function" building its pipeline (imported only when written).
CHECKPOINTS: dict[str, str] = {
    "stable-diffusion": "gpu_worker.tiny.stable_diffusion:build",
    "stable-diffusion-xl": "gpu_worker.tiny.stable_diffusion_xl:build",
    "flux": "gpu_worker.tiny.flux:build",
    "ltx-video": "gpu_worker.tiny.ltx_video:build",
    "qwen-image": "gpu_worker.tiny.qwen_image:build_base",
    "qwen-image-edit": "gpu_worker.tiny.qwen_image:build_edit",
}
FAMILIES: tuple[str, ...] = tuple(CHECKPOINTS)


def make_tiny(name: str, out_dir: Path, *, seed: int = 0) -> Path:
    """Write the tiny checkpoint ``name`` to ``out_dir`` and return ``out_dir``."""
    if name not in CHECKPOINTS:
        raise ValueError(f"unknown checkpoint {name!r}; expected one of {FAMILIES}")
    module_name, function = CHECKPOINTS[name].split(":")
    build = getattr(importlib.import_module(module_name), function)
    # Seeded weights, without disturbing the caller's global RNG (tests call this mid-session).
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        pipe = build()
    out_dir = Path(out_dir)
    pipe.save_pretrained(out_dir)
    return out_dir


def make_all(root: Path) -> dict[str, Path]:
    """Every tiny checkpoint under ``root/<name>``, writing those not there yet: a folder written
    by an older version gains the checkpoints added since. A folder with a ``model_index.json``
    is complete (``save_pretrained`` writes it last) and kept; delete it to write it again."""
    folders = {name: Path(root) / name for name in CHECKPOINTS}
    for name, folder in folders.items():
        if not (folder / "model_index.json").exists():
            make_tiny(name, folder)
    return folders
