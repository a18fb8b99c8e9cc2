"""A route's GPU settings applied to its freshly loaded pipelines (``common.catalog.GpuSettings``).

Compilation is only arranged here: it happens on the first call, which is the warm-up render
the registry runs before the route counts as loaded.
"""

from __future__ import annotations

import torch

from common.catalog import GpuSettings
from common.logging import get_logger
from gpu_worker.families import Pipelines

log = get_logger(__name__)


def _modules(pipelines: Pipelines, *names: str) -> list[torch.nn.Module]:
    """The named components of a route's pipelines, each once (variants share modules)."""
    found: dict[int, torch.nn.Module] = {}
    for pipe in pipelines.values():
        for name in names:
            module = pipe.components.get(name)
            if isinstance(module, torch.nn.Module):
                found[id(module)] = module
    return list(found.values())


def optimize(pipelines: Pipelines, gpu: GpuSettings) -> None:
    denoisers = _modules(pipelines, "unet", "transformer")
    for module in denoisers:
        if gpu.attention_backend:
            module.set_attention_backend(gpu.attention_backend)  # type: ignore[operator]
    if gpu.channels_last:
        for module in denoisers + _modules(pipelines, "vae"):
            module.to(memory_format=torch.channels_last)
    for module in denoisers:
        if gpu.compile == "regional" and getattr(module, "_repeated_blocks", None):
            module.compile_repeated_blocks()  # type: ignore[operator]
        elif gpu.compile != "off":
            if gpu.compile == "regional":
                log.info("model.compile_whole", reason="no repeated blocks declared")
            module.compile()
