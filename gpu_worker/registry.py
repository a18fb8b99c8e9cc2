"""Resident pipelines: each route's weights are loaded once and reused by every job.

The same loader serves hub ids in production and the tiny local checkpoints in tests and the demo.
Image-to-image pipelines share the text-to-image pipeline's modules (``from_pipe``), so a route
costs one copy of its weights whatever tasks it serves. A route counts as loaded only after its GPU
settings are applied and a warm-up render ran (compiling what it compiles), so no job pays for
either. A route whose weights fail to load (missing, corrupt, no access) is recorded and the others
load and serve; its jobs fail at once with the error until a later try succeeds.
"""

from __future__ import annotations

import contextlib
import gc
import threading
import time
from collections import OrderedDict
from datetime import UTC, datetime

import diffusers
import torch
import transformers
from PIL import Image

from common.catalog import Catalog, ModelRoute
from common.logging import get_logger
from common.schemas import JobSpec, RenderParams, Task
from gpu_worker.families import Pipeline, batch_family, family
from gpu_worker.fingerprint import UnknownWeights, route_fingerprint
from gpu_worker.metrics import MODEL_LOAD_FAILED
from gpu_worker.optimize import optimize

# Loading bars are noise in JSON logs; model.loaded carries the duration instead.
diffusers.utils.logging.disable_progress_bar()
transformers.utils.logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # transformers: no hints

log = get_logger(__name__)

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
# A route that failed to load is tried again by its first job after this long; meanwhile its jobs
# fail at once instead of each holding the device for another failing load.
LOAD_RETRY_S = 300.0
# Load errors (hub replies, paths) are cut to this for job records and heartbeats.
LOAD_ERROR_CHARS = 300


class RouteUnavailable(Exception):
    """A route whose weights failed to load on this worker; the message is for the job's client."""

    def __init__(self, route: str, error: str) -> None:
        super().__init__(f"Model {route!r} is unavailable: its weights failed to load ({error})")


def pick_device(name: str) -> torch.device:
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def pipelines_bytes(pipelines: dict[Task, Pipeline]) -> int:
    """Memory held by a route's weights, counting modules shared between its pipelines once."""
    modules = {
        id(module): module
        for pipe in pipelines.values()
        for module in pipe.components.values()
        if isinstance(module, torch.nn.Module)
    }
    return sum(
        t.numel() * t.element_size()
        for module in modules.values()
        for t in (*module.parameters(), *module.buffers())
    )


class ModelRegistry:
    """Resident pipelines per route. Past ``memory_budget_bytes`` the least recently used routes
    are unloaded, so a worker can serve more routes than fit in its memory at once."""

    def __init__(
        self,
        catalog: Catalog,
        routes: list[str],
        device: torch.device,
        memory_budget_bytes: int | None = None,
    ) -> None:
        unknown = set(routes) - set(catalog.routes)
        if unknown:
            raise ValueError(
                f"unknown route(s) {sorted(unknown)}; the catalogue has {sorted(catalog.routes)}"
            )
        self.routes = {name: catalog.routes[name] for name in (routes or catalog.routes)}
        for route in self.routes.values():
            if route.gpu.max_batch > 1 and batch_family(route.family) is None:
                raise ValueError(
                    f"route {route.name!r}: the {route.family} family renders one job at a time; "
                    "set gpu.max_batch = 1"
                )
        self.device = device
        self.memory_budget_bytes = memory_budget_bytes
        # Least recently used first.
        self._loaded: OrderedDict[str, tuple[dict[Task, Pipeline], int]] = OrderedDict()
        self._failed: dict[str, tuple[str, float]] = {}  # route → (error, monotonic time)
        # Route → render fingerprint, taken at its latest successful load.
        self._fingerprints: dict[str, str] = {}
        self._lock = threading.Lock()

    @property
    def route_names(self) -> list[str]:
        return list(self.routes)

    @property
    def loaded_route_names(self) -> list[str]:
        return list(self._loaded)

    def is_loaded(self, route_name: str) -> bool:
        return route_name in self._loaded

    @property
    def fingerprints(self) -> dict[str, str]:
        """Each route's render fingerprint as of its latest load (``gpu_worker.fingerprint``);
        a route never loaded here, or whose weights' identity is unknown, has none."""
        return dict(self._fingerprints)

    @property
    def load_errors(self) -> dict[str, str]:
        """Routes whose last load failed, with the error."""
        return {name: error for name, (error, _) in self._failed.items()}

    def unavailable(self, route_name: str) -> RouteUnavailable | None:
        """The route's load failure, while too recent to try loading it again."""
        failed = self._failed.get(route_name)
        if failed is None or time.monotonic() - failed[1] >= LOAD_RETRY_S:
            return None
        return RouteUnavailable(route_name, failed[0])

    def _dtype(self, route: ModelRoute) -> torch.dtype:
        # Half precision is a GPU format; on a CPU it is slow or unsupported.
        return DTYPES[route.dtype] if self.device.type != "cpu" else torch.float32

    def pipelines(self, route_name: str) -> dict[Task, Pipeline]:
        """The resident pipelines of a route, one per task, loaded on first use (call in a
        thread: loading blocks). :class:`RouteUnavailable` if its weights do not load."""
        with self._lock:
            if route_name not in self._loaded:
                pipelines = self._load_or_record(self.routes[route_name])
                self._loaded[route_name] = (pipelines, pipelines_bytes(pipelines))
                self._evict_beyond_budget(keep=route_name)
            self._loaded.move_to_end(route_name)
            return self._loaded[route_name][0]

    def _evict_beyond_budget(self, keep: str) -> None:
        if self.memory_budget_bytes is None:
            return
        while sum(size for _, size in self._loaded.values()) > self.memory_budget_bytes:
            victim = next((name for name in self._loaded if name != keep), None)
            if victim is None:
                return  # the route in use alone exceeds the budget: keep it anyway
            _, size = self._loaded.pop(victim)
            gc.collect()
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            log.info("model.unloaded", model=victim, reason="memory_budget", bytes=size)

    def pipeline(self, route_name: str, task: Task) -> Pipeline:
        return self.pipelines(route_name)[task]

    def load_all(self) -> None:
        """Load every route; one that fails is recorded (``load_errors``), the rest load."""
        for name in self.routes:
            with contextlib.suppress(RouteUnavailable):
                self.pipelines(name)

    def _load_or_record(self, route: ModelRoute) -> dict[Task, Pipeline]:
        unavailable = self.unavailable(route.name)
        if unavailable is not None:
            raise unavailable
        try:
            pipelines = self._load(route)
        # Any failure, whatever raised it (hub HTTP errors, a corrupt file, out of memory):
        # one route that does not load must not take the worker's other routes down with it.
        except Exception as exc:
            error = " ".join(f"{type(exc).__name__}: {exc}".split())[:LOAD_ERROR_CHARS]
            self._failed[route.name] = (error, time.monotonic())
            self._fingerprints.pop(route.name, None)
            MODEL_LOAD_FAILED.labels(route.name).set(1)
            log.error("model.load_failed", model=route.name, weights=route.weights, exc_info=exc)
            raise RouteUnavailable(route.name, error) from exc
        self._failed.pop(route.name, None)
        MODEL_LOAD_FAILED.labels(route.name).set(0)
        try:
            self._fingerprints[route.name] = route_fingerprint(
                route, self._dtype(route), self.device
            )
        except UnknownWeights as exc:  # served, but its results are not cached
            self._fingerprints.pop(route.name, None)
            log.warning("model.fingerprint_unknown", model=route.name, error=str(exc))
        return pipelines

    def _load(self, route: ModelRoute) -> dict[Task, Pipeline]:
        started = time.perf_counter()
        pipelines = family(route.family).load(route, self._dtype(route), self.device)
        for pipe in pipelines.values():
            pipe.set_progress_bar_config(disable=True)
        optimize(pipelines, route.gpu)
        loaded = time.perf_counter()
        warm_up(route, pipelines)
        log.info(
            "model.loaded",
            model=route.name,
            family=route.family,
            weights=route.weights,
            device=str(self.device),
            duration_ms=round((loaded - started) * 1000),
            warm_up_ms=round((time.perf_counter() - loaded) * 1000),
        )
        return pipelines


def warm_up(route: ModelRoute, pipelines: dict[Task, Pipeline]) -> None:
    """A short render at the route's default size: first-call costs (compilation, kernel
    selection, allocator growth) are paid here, not by a job."""
    text_tasks = [task for task in route.tasks if task in (Task.T2I, Task.T2V)]
    task = (text_tasks or route.tasks)[0]
    defaults = route.defaults
    image = None if text_tasks else Image.new("RGB", (defaults.width, defaults.height), "gray")
    spec = JobSpec(
        job_id="warm-up",
        model=route.name,
        task=task,
        params=RenderParams(
            prompt="warm-up",
            width=defaults.width,
            height=defaults.height,
            num_inference_steps=max(route.min_steps, 2),
            guidance_scale=defaults.guidance_scale,
            seed=0,
            num_frames=defaults.num_frames or None,
            fps=defaults.fps or None,
            angles=route.default_angles[:1] or None,
            strength=None if text_tasks else 0.5,
        ),
        created_at=datetime.now(UTC),
    )
    family(route.family).render(pipelines, spec, image, lambda done, total: None)
