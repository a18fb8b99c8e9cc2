"""Fills the shared model cache before any worker serves: every hub repository the catalogue names.

The model-prefetch Job (model-prefetch.yaml) runs it with the worker image:

    python prefetch.py CATALOGUE MARKER_DIR

Pipelines come down through ``DiffusionPipeline.download``, the file selection the workers'
``from_pretrained`` makes (no other variants, no single-file checkpoints beside the folders);
LoRAs as the file the route names. Files already in the cache are not fetched again. Last, it
writes ``MARKER_DIR/prefetched-<sha256 of the catalogue>``, which the workers' wait-for-models
init container waits for: workers run with HF_HUB_OFFLINE=1 and never reach the hub.
"""

from __future__ import annotations

import hashlib
import sys
import time
from pathlib import Path

from diffusers import DiffusionPipeline
from huggingface_hub import hf_hub_download, snapshot_download

from common.catalog import Catalog, ModelRoute
from common.schemas import Task

# Components a family's loader takes from another pipeline instead of the repository, so they
# need not be fetched: gpu_worker/families/qwen_image.py's text-to-image pipeline reuses the
# edit model's VAE, text encoder and tokenizer (16 GB).
SHARED_COMPONENTS: dict[str, tuple[str, ...]] = {
    "qwen-image": ("vae", "text_encoder", "tokenizer"),
}


def is_hub_id(weights: str) -> bool:
    """A hub id (``org/name``), not a local directory, which is the operator's to fill."""
    return not weights.startswith(("/", ".", "~"))


def pipelines_of(route: ModelRoute) -> list[tuple[str, tuple[str, ...]]]:
    """(repository, components not to fetch) for each pipeline the route's loader reads."""
    if route.family == "qwen-image" and route.edit_weights:
        wanted: list[tuple[str, tuple[str, ...]]] = [(route.edit_weights, ())]
        if Task.T2I in route.tasks:
            wanted.append((route.weights, SHARED_COMPONENTS["qwen-image"]))
        return wanted
    return [(route.weights, ())]


def fetch(catalog: Catalog) -> list[str]:
    fetched: list[str] = []
    for name, route in sorted(catalog.routes.items()):
        for repo, shared in pipelines_of(route):
            if not is_hub_id(repo):
                continue
            began = time.monotonic()
            path = DiffusionPipeline.download(repo, **dict.fromkeys(shared))
            log("prefetch.pipeline", route=name, repo=repo, path=path, began=began)
            fetched.append(repo)
        for lora in route.loras:
            if not is_hub_id(lora.weights):
                continue
            began = time.monotonic()
            if lora.weight_name:
                path = hf_hub_download(lora.weights, lora.weight_name)
            else:
                path = snapshot_download(lora.weights)
            log("prefetch.lora", route=name, repo=lora.weights, path=path, began=began)
            fetched.append(lora.weights)
    return fetched


def log(event: str, began: float, **fields: object) -> None:
    duration_ms = round((time.monotonic() - began) * 1000)
    pairs = " ".join(f"{key}={value}" for key, value in fields.items())
    print(f"{event} {pairs} duration_ms={duration_ms}", flush=True)


def main(catalogue: Path, marker_dir: Path) -> None:
    began = time.monotonic()
    text = catalogue.read_bytes()
    fetched = fetch(Catalog.load(catalogue))
    marker_dir.mkdir(parents=True, exist_ok=True)
    marker = marker_dir / f"prefetched-{hashlib.sha256(text).hexdigest()}"
    marker.write_text("".join(f"{repo}\n" for repo in fetched))
    log("prefetch.done", marker=marker, repositories=len(fetched), began=began)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python prefetch.py CATALOGUE MARKER_DIR")
    main(Path(sys.argv[1]), Path(sys.argv[2]))
