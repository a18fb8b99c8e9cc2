"""A route's render fingerprint: a digest of everything besides the request that decides the
bytes this worker renders for it, so the result cache (``common.result_cache``) can tell when a
stored result still is what a render would give.

It covers the route's family, its weights and their identity (a hub id's snapshot commit; a
local checkpoint's files, sizes and modification times, not their contents: a checkpoint is
gigabytes), its LoRAs and their scales, the dtype and device actually used, the GPU settings that
change the arithmetic, and the library versions. It is taken when the route loads, so it
describes the weights resident, even if the files change on disk afterwards.
"""

from __future__ import annotations

import hashlib
import json
import os
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import huggingface_hub
import torch
from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

from common.catalog import ModelRoute

# The libraries whose upgrade may change a render's bytes (numerics, schedulers, encoders).
LIBRARIES = ("diffusers", "torch", "transformers", "pillow", "imageio", "av", "numpy")


class UnknownWeights(Exception):
    """A weights location whose identity cannot be told (a hub id not in the local cache)."""


def route_fingerprint(route: ModelRoute, dtype: torch.dtype, device: torch.device) -> str:
    """The fingerprint of ``route`` rendered here; ``UnknownWeights`` when it cannot be told."""
    gpu = route.gpu
    facts = {
        "family": route.family,
        "weights": weights_identity(route.weights),
        "edit_weights": weights_identity(route.edit_weights) if route.edit_weights else None,
        "loras": [
            {
                "weights": weights_identity(lora.weights),
                "weight_name": lora.weight_name,
                "adapter_name": lora.adapter_name,
                "scale": lora.scale,
            }
            for lora in route.loras
        ],
        "dtype": str(dtype),
        "device": _device(device),
        "gpu": {
            "attention_backend": gpu.attention_backend,
            "channels_last": gpu.channels_last,
            "compile": gpu.compile,
        },
        "libraries": {name: _version(name) for name in LIBRARIES},
    }
    encoded = json.dumps(facts, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(encoded).hexdigest()[:32]


def weights_identity(location: str) -> str:
    """What names these exact weights: a local file's or folder's stat, or a hub snapshot."""
    path = Path(location)
    if path.is_dir():
        return f"dir:{path.resolve()}:{_tree_digest(path)}"
    if path.is_file():
        stat = path.stat()
        return f"file:{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    try:
        # The snapshot from_pretrained loaded from; its folder is named by the commit.
        snapshot = huggingface_hub.snapshot_download(location, local_files_only=True)
    except (LocalEntryNotFoundError, HFValidationError, OSError, ValueError) as exc:
        raise UnknownWeights(f"{location}: {exc}") from exc
    return f"hub:{location}@{Path(snapshot).name}"


def _tree_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            stat = path.stat()
            digest.update(f"{path.relative_to(root)}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _device(device: torch.device) -> str:
    # Different GPU models may round differently; one model renders the same bytes.
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return device.type


def _version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None
