"""The model catalogue: which routes exist, what family and weights serve them, and their limits.

The gateway validates requests against it and the worker loads pipelines from it, so both read the
same file (``DARKROOM_MODELS_FILE``, TOML). Without one, the production catalogue below applies.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal

import tomli_w
from pydantic import BaseModel, ConfigDict, Field, model_validator

from common.schemas import Task

Family = Literal["stable-diffusion", "stable-diffusion-xl", "flux", "qwen-image", "ltx-video"]


class Lora(BaseModel):
    """A LoRA loaded into the route's pipelines at start-up."""

    model_config = ConfigDict(extra="forbid")

    weights: str = Field(description="A hub id or a local directory.")
    weight_name: str | None = Field(default=None, description="The file inside, if several.")
    adapter_name: str = "default"
    scale: float = 1.0


class RouteDefaults(BaseModel):
    """What a request that leaves a field out gets. Image routes keep seed 1's documented
    defaults (512², 50 steps, guidance 7.5) whatever the model; video routes set their own."""

    model_config = ConfigDict(extra="forbid")

    width: int = 512
    height: int = 512
    num_inference_steps: int = 50
    guidance_scale: float = 7.5
    num_frames: int = 0
    fps: int = 0


class GpuSettings(BaseModel):
    """How a route's pipelines run: precision, attention, memory layout, compilation, batching.

    Every setting takes effect when the worker loads the route; compilation happens during the
    warm-up render that precedes "ready", never on a job's clock.
    """

    model_config = ConfigDict(extra="forbid")

    # A diffusers attention backend ("native" is PyTorch SDPA, "flash", "_native_cudnn",
    # "sage"…); unset keeps diffusers' default, which is PyTorch SDPA.
    attention_backend: str | None = None
    # NHWC convolutions: faster for UNet models on tensor cores.
    channels_last: bool = False
    # torch.compile of the denoiser: "regional" compiles its repeated blocks once and reuses the
    # code for every block (seconds instead of minutes); "full" the whole module.
    compile: Literal["off", "regional", "full"] = "off"
    # Compatible jobs (same task, size, steps, guidance, strength) waiting together render in one
    # pipeline call, up to this many, gathered for at most ``batch_window_ms``. It pays for
    # SD-class models at 512², not for large DiTs at 1024² or video, which fill the GPU alone.
    max_batch: int = Field(default=1, ge=1, le=64)
    batch_window_ms: int = Field(default=0, ge=0, le=1000)


class ModelRoute(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    family: Family
    weights: str = Field(description="A hub id or a local directory written by save_pretrained.")
    # A second checkpoint some families need (Qwen multi-angle: the image-edit model).
    edit_weights: str | None = None
    loras: list[Lora] = Field(default_factory=list)
    tasks: list[Task]
    dtype: Literal["float16", "bfloat16", "float32"] = "float16"
    max_width: int = 1024
    max_height: int = 1024
    max_steps: int = 150
    min_steps: int = 1
    size_multiple: int = 8
    # Video routes: the longest clip, and the frame-count rule (frames = k * multiple + 1).
    max_frames: int = 0
    frame_multiple: int = 1
    # Delivery: a job whose render fails is retried up to this many deliveries in all; one held
    # by a silent worker this long is taken over by another (unset: the worker's setting).
    max_attempts: int = 3
    claim_idle_ms: int | None = None
    # A render that goes this long without a denoising step is stuck (a hung CUDA call): its
    # jobs go to another worker and the worker turns not live, so Kubernetes restarts it. The
    # gap includes prompt encoding before the first step and decoding after the last (unset:
    # see ``stall_after_s``).
    stall_timeout_s: float | None = Field(default=None, gt=0)
    # A hard limit on one pipeline call, however steadily it steps: past it the render stops
    # at its next step and the attempt fails like a stall (another worker tries, up to
    # max_attempts; the last attempt fails the job). Unset: no limit.
    max_render_s: float | None = Field(default=None, gt=0)
    # Multi-angle routes: the camera angles rendered when a request names none.
    default_angles: list[str] = Field(default_factory=list)
    defaults: RouteDefaults = Field(default_factory=RouteDefaults)
    # Jobs waiting or rendering on this route at which a submit is refused (429 queue_full).
    max_queue: int = Field(default=1000, ge=1)
    gpu: GpuSettings = Field(default_factory=GpuSettings)

    @property
    def stall_after_s(self) -> float:
        """How long a render may go without a step: ``stall_timeout_s``, or 5 minutes, 15 on
        a video route (decoding a long clip after the last step takes minutes on its own)."""
        if self.stall_timeout_s is not None:
            return self.stall_timeout_s
        return 900.0 if self.max_frames else 300.0


class StylePreset(BaseModel):
    """Seed 2's ``style_id``: a prompt template and a negative prompt."""

    model_config = ConfigDict(extra="forbid")

    id: int
    name: str
    prompt: str = "{prompt}"
    negative_prompt: str = ""

    def apply(self, prompt: str, negative_prompt: str | None) -> tuple[str, str | None]:
        negatives = [n for n in (negative_prompt, self.negative_prompt) if n]
        return self.prompt.format(prompt=prompt), ", ".join(negatives) or None


class Catalog(BaseModel):
    model_config = ConfigDict(extra="forbid")

    routes: dict[str, ModelRoute]
    styles: dict[int, StylePreset]
    # The route behind seed 2's /v1/generate.
    v1_route: str = "sd"

    @model_validator(mode="before")
    @classmethod
    def _names_from_keys(cls, data: dict[str, object]) -> dict[str, object]:
        # In TOML the table key is the name: [routes.sd] / [styles.1].
        for section, key in (("routes", "name"), ("styles", "id")):
            table = data.get(section)
            if isinstance(table, dict):
                for name, entry in table.items():
                    if isinstance(entry, dict):
                        entry.setdefault(key, name)
        return data

    @model_validator(mode="after")
    def _v1_route_exists(self) -> Catalog:
        if self.v1_route not in self.routes:
            raise ValueError(f"v1_route {self.v1_route!r} is not one of the routes")
        return self

    @classmethod
    def load(cls, path: Path | None) -> Catalog:
        if path is None:
            return production_catalog()
        with path.open("rb") as fh:
            return cls.model_validate(tomllib.load(fh))


DEFAULT_STYLES = {
    0: StylePreset(id=0, name="none"),
    1: StylePreset(
        id=1,
        name="photographic",
        prompt="{prompt}, photograph, 35mm, natural light, highly detailed",
        negative_prompt="drawing, painting, illustration, cartoon",
    ),
    2: StylePreset(
        id=2,
        name="anime",
        prompt="{prompt}, anime style, cel shading, vibrant colors",
        negative_prompt="photo, realistic",
    ),
    3: StylePreset(
        id=3,
        name="digital-art",
        prompt="{prompt}, digital art, concept art, trending on artstation",
    ),
    4: StylePreset(
        id=4,
        name="pixel-art",
        prompt="{prompt}, pixel art, 16-bit game sprite, clean palette",
        negative_prompt="blurry, photo",
    ),
    5: StylePreset(
        id=5,
        name="watercolor",
        prompt="{prompt}, watercolor painting, soft edges, paper texture",
    ),
}


DEFAULT_ANGLES = ["front", "left 45°", "right 45°", "back", "top-down", "close-up"]


def production_catalog() -> Catalog:
    """The routes the seeds name, on their real weights (downloaded by the worker on first load)."""
    return Catalog(
        routes={
            "sd": ModelRoute(
                name="sd",
                family="stable-diffusion",
                weights="stable-diffusion-v1-5/stable-diffusion-v1-5",
                tasks=[Task.T2I, Task.I2I],
                gpu=GpuSettings(channels_last=True, max_batch=8, batch_window_ms=5),
            ),
            "sdxl": ModelRoute(
                name="sdxl",
                family="stable-diffusion-xl",
                weights="stabilityai/stable-diffusion-xl-base-1.0",
                tasks=[Task.T2I, Task.I2I],
                # 1024² is its native size; well past 1536 it repeats subjects.
                max_width=1536,
                max_height=1536,
                # Four 1024² renders fill a GPU as eight of SD 1.5's 512² do.
                gpu=GpuSettings(channels_last=True, max_batch=4, batch_window_ms=5),
            ),
            "flux": ModelRoute(
                name="flux",
                family="flux",
                weights="black-forest-labs/FLUX.1-dev",
                tasks=[Task.T2I, Task.I2I],
                # bf16: the released precision; fp16 overflows in T5 and the transformer.
                dtype="bfloat16",
                # The scheduler's shift is calibrated up to 4096 latent tokens (1024²).
                max_width=1440,
                max_height=1440,
                max_steps=100,
                size_multiple=16,
            ),
            "qwen-multi-angle": ModelRoute(
                name="qwen-multi-angle",
                family="qwen-image",
                weights="Qwen/Qwen-Image",
                edit_weights="Qwen/Qwen-Image-Edit-2509",
                loras=[
                    Lora(
                        weights="dx8152/Qwen-Edit-2509-Multiple-angles",
                        weight_name="镜头转换.safetensors",
                        adapter_name="multiple-angles",
                    )
                ],
                tasks=[Task.T2I, Task.I2I],
                dtype="bfloat16",
                max_width=1664,
                max_height=1664,
                max_steps=100,
                size_multiple=16,
                default_angles=DEFAULT_ANGLES,
                # Its flow-matching schedule is undefined for a single step.
                min_steps=2,
            ),
            "ltx": ModelRoute(
                name="ltx",
                family="ltx-video",
                weights="Lightricks/LTX-Video",
                tasks=[Task.T2V, Task.I2V],
                dtype="bfloat16",
                max_width=1280,
                max_height=1280,
                max_steps=100,
                # LTX's terminal-shift schedule is undefined for a single step.
                min_steps=2,
                size_multiple=32,
                max_frames=257,
                frame_multiple=8,
                defaults=RouteDefaults(
                    width=768,
                    height=512,
                    num_inference_steps=40,
                    guidance_scale=3.0,
                    num_frames=121,
                    fps=24,
                ),
            ),
        },
        styles=DEFAULT_STYLES,
    )


# Tiny checkpoint folder names (see gpu_worker/tiny) by family; the edit model has its own.
_TINY_EDIT = {"qwen-image": "qwen-image-edit"}
# Video on a CPU: defaults that finish in seconds (a full 768×512×121 clip still works).
_DEMO_VIDEO_DEFAULTS = RouteDefaults(
    width=512, height=320, num_inference_steps=8, guidance_scale=3.0, num_frames=49, fps=24
)


def demo_catalog(models_dir: Path) -> Catalog:
    """Every route served from tiny random-weight checkpoints: offline, quick on a CPU."""
    catalog = production_catalog()
    routes = {}
    for name, route in catalog.routes.items():
        edit = _TINY_EDIT.get(route.family)
        routes[name] = route.model_copy(
            update={
                "weights": str(models_dir / route.family),
                "edit_weights": str(models_dir / edit) if edit else None,
                # No tiny LoRA ships with the demo; multi-angle falls back to prompt instructions.
                "loras": [],
                "dtype": "float32",
                "max_width": max(route.max_width, 2048),
                "max_height": max(route.max_height, 2048),
                "defaults": _DEMO_VIDEO_DEFAULTS if route.max_frames else route.defaults,
                # A CPU gains nothing from NHWC; batching still pays, without waiting for it.
                "gpu": route.gpu.model_copy(update={"channels_last": False, "batch_window_ms": 0}),
            }
        )
    return catalog.model_copy(update={"routes": routes})


def write_catalog(catalog: Catalog, path: Path) -> None:
    """Write a catalogue as the TOML file services read."""
    data = catalog.model_dump(mode="json", exclude_none=True)
    for route in data["routes"].values():
        del route["name"]
    data["styles"] = {
        str(k): {f: v for f, v in s.items() if f != "id"} for k, s in data["styles"].items()
    }
    path.write_text(tomli_w.dumps(data))
