"""Resident pipelines: each route's weights are loaded once and reused by every job.

The same loader serves hub ids in production and the tiny local checkpoints in tests and the demo.
Image-to-image pipelines share the text-to-image pipeline's modules (``from_pipe``), so a route
costs one copy of its weights whatever tasks it serves.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

import diffusers
import torch
import transformers
from diffusers import DiffusionPipeline, StableDiffusionImg2ImgPipeline, StableDiffusionPipeline

from common.catalog import Catalog, ModelRoute
from common.logging import get_logger
from common.schemas import Task

# Loading bars are noise in JSON logs; model.loaded carries the duration instead.
diffusers.utils.logging.disable_progress_bar()
transformers.utils.logging.disable_progress_bar()

log = get_logger(__name__)

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def pick_device(name: str) -> torch.device:
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


class ModelRegistry:
    def __init__(self, catalog: Catalog, routes: list[str], device: torch.device) -> None:
        unknown = set(routes) - set(catalog.routes)
        if unknown:
            raise ValueError(
                f"unknown route(s) {sorted(unknown)}; the catalogue has {sorted(catalog.routes)}"
            )
        self.routes = [catalog.routes[name] for name in (routes or catalog.routes)]
        self.device = device
        self._pipelines: dict[tuple[str, Task], DiffusionPipeline] = {}
        self._lock = threading.Lock()

    @property
    def route_names(self) -> list[str]:
        return [route.name for route in self.routes]

    def _dtype(self, route: ModelRoute) -> torch.dtype:
        # Half precision is a GPU format; on a CPU it is slow or unsupported.
        return DTYPES[route.dtype] if self.device.type != "cpu" else torch.float32

    def pipeline(self, route_name: str, task: Task) -> DiffusionPipeline:
        """The resident pipeline for a route and task, loaded on first use (call in a thread)."""
        key = (route_name, task)
        with self._lock:
            if key not in self._pipelines:
                self._load(next(r for r in self.routes if r.name == route_name))
            return self._pipelines[key]

    def load_all(self) -> None:
        for route in self.routes:
            with self._lock:
                if (route.name, route.tasks[0]) not in self._pipelines:
                    self._load(route)

    def _load(self, route: ModelRoute) -> None:
        started = time.perf_counter()
        if route.family == "stable-diffusion":
            base = StableDiffusionPipeline.from_pretrained(route.weights, dtype=self._dtype(route))
            base = base.to(self.device)
            variants: dict[Task, DiffusionPipeline] = {Task.T2I: base}
            if Task.I2I in route.tasks:
                with _quiet_diffusers():
                    variants[Task.I2I] = StableDiffusionImg2ImgPipeline.from_pipe(base)
        else:  # pragma: no cover - the catalogue's Literal makes this unreachable
            raise ValueError(f"unsupported family {route.family!r}")
        for task in route.tasks:
            variants[task].set_progress_bar_config(disable=True)
            self._pipelines[(route.name, task)] = variants[task]
        log.info(
            "model.loaded",
            model=route.name,
            family=route.family,
            weights=route.weights,
            device=str(self.device),
            duration_ms=round((time.perf_counter() - started) * 1000),
        )


@contextlib.contextmanager
def _quiet_diffusers() -> Iterator[None]:
    """``from_pipe`` always warns about float32 modules, listing none (a diffusers quirk)."""
    level = diffusers.utils.logging.get_verbosity()
    diffusers.utils.logging.set_verbosity_error()
    try:
        yield
    finally:
        diffusers.utils.logging.set_verbosity(level)
