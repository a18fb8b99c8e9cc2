"""Pipeline families: how each kind of model is loaded and called.

A family module has two functions, and a third if it can batch:

- ``load(route, dtype, device) -> dict[Task, DiffusionPipeline]``: one pipeline per task the
  route serves, sharing one copy of the weights (``from_pipe``).
- ``render(pipelines, spec, image, on_step, previews=None) -> list[Artifact]``: one job's
  outputs (blocking; the worker calls it on its render thread). ``on_step(done, total)`` is
  called after every denoising step of the whole job, so a job of several renders reports one
  rising progress. ``previews``, when given, hears each step's latents too, with the family's
  ``LatentPreview`` (its latent2rgb factors and how its pipelines pack latents).
- ``render_batch(pipelines, specs, images, on_step, previews=None) -> list[list[Artifact]]``:
  compatible jobs in one pipeline call, each with its own generator; the outputs of each job, in
  order (job ``i``'s latents are row ``i`` of the batch's).
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from PIL import Image

from common.catalog import Lora, ModelRoute
from common.schemas import JobSpec, Task
from gpu_worker.previews import LatentFormat, LatentPreview, Layout, format_for

# (steps done, steps in the whole job)
StepCallback = Callable[[int, int], None]
# (steps done, steps in the whole job, the call's latents on the device, how to read them); on
# the render thread, so it may only look and copy (``gpu_worker.previews.JobPreviews.offer``).
PreviewSink = Callable[[int, int, torch.Tensor, LatentPreview], None]


class Pipeline(Protocol):
    """What the worker uses of a diffusers pipeline. Spelt out because, to a type checker,
    ``from diffusers import X`` names diffusers' placeholder classes, which declare none of it."""

    @property
    def components(self) -> dict[str, Any]: ...

    def set_progress_bar_config(self, **kwargs: Any) -> None: ...

    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...


Pipelines = Mapping[Task, Pipeline]


@dataclass(frozen=True)
class Artifact:
    """One output of a job: a still image, or a video's frames and rate."""

    image: Image.Image | None = None
    frames: list[Image.Image] = field(default_factory=list)
    fps: int = 0


class Family(Protocol):
    def load(
        self, route: ModelRoute, dtype: torch.dtype, device: torch.device
    ) -> dict[Task, Pipeline]: ...

    def render(
        self,
        pipelines: Pipelines,
        spec: JobSpec,
        image: Image.Image | None,
        on_step: StepCallback,
        previews: PreviewSink | None = None,
    ) -> list[Artifact]: ...


class BatchFamily(Family, Protocol):
    def render_batch(
        self,
        pipelines: Pipelines,
        specs: list[JobSpec],
        images: list[Image.Image | None],
        on_step: StepCallback,
        previews: PreviewSink | None = None,
    ) -> list[list[Artifact]]: ...


BatchRender = Callable[
    [Pipelines, list[JobSpec], list[Image.Image | None], StepCallback, PreviewSink | None],
    list[list[Artifact]],
]


def one_at_a_time(render_batch: BatchRender) -> Callable[..., list[Artifact]]:
    """A family's ``render`` for one job, from its ``render_batch``."""

    def render(
        pipelines: Pipelines,
        spec: JobSpec,
        image: Image.Image | None,
        on_step: StepCallback,
        previews: PreviewSink | None = None,
    ) -> list[Artifact]:
        return render_batch(pipelines, [spec], [image], on_step, previews)[0]

    return render


def batch_family(name: str) -> BatchFamily | None:
    """The family, if it renders batches."""
    module = family(name)
    return module if hasattr(module, "render_batch") else None  # type: ignore[return-value]


def input_image(image: Image.Image | None, size: tuple[int, int]) -> Image.Image:
    """An image-to-image job's input, as RGB at the render size."""
    if image is None:
        raise ValueError("an image-to-image job needs its input image")
    return image.convert("RGB").resize(size, Image.Resampling.LANCZOS)


def generator(seed: int) -> torch.Generator:
    """A CPU generator: the same seed gives the same image on any device."""
    return torch.Generator(device="cpu").manual_seed(seed)


def step_end(
    on_step: StepCallback,
    offset: int = 0,
    total: int | None = None,
    *,
    previews: PreviewSink | None = None,
    preview: LatentPreview | None = None,
) -> Any:
    """A diffusers ``callback_on_step_end`` reporting step ``offset + done`` of ``total``
    (default: this pipeline call's own step count), and handing the step's latents to
    ``previews`` (read with ``preview``) when both are given."""

    def callback(pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        done, of = offset + step + 1, total if total is not None else int(pipe.num_timesteps)
        on_step(done, of)
        if previews is not None and preview is not None:
            previews(done, of, tensors["latents"], preview)
        return tensors

    return callback


def render_images(
    pipe: Any,
    specs: list[JobSpec],
    images: list[Image.Image | None],
    on_step: StepCallback,
    inputs: dict[str, Any],
    previews: PreviewSink | None = None,
    preview: LatentPreview | None = None,
) -> list[list[Artifact]]:
    """What the image families' ``render_batch`` share: compatible jobs (same task, size, steps,
    guidance, strength) in one call of ``pipe``, each with its own generator, so a seed gives the
    same image batched or alone. ``inputs`` holds what the family passes its own way: the prompts,
    or their embeddings. Text-to-image renders at the jobs' size; image-to-image takes its size
    from the input images, resized to it."""
    params, task = specs[0].params, specs[0].task
    kwargs: dict[str, Any] = {
        "num_inference_steps": params.num_inference_steps,
        "guidance_scale": params.guidance_scale,
        "generator": [generator(spec.params.seed) for spec in specs],
        "callback_on_step_end": step_end(on_step, previews=previews, preview=preview),
    }
    if task == Task.I2I:
        size = (params.width, params.height)
        kwargs["image"] = [input_image(image, size) for image in images]
        kwargs["strength"] = params.strength
    else:
        kwargs["width"], kwargs["height"] = params.width, params.height
    with torch.inference_mode():
        outputs: list[Image.Image] = pipe(**(kwargs | inputs)).images
    return [[Artifact(image=im)] for im in outputs]


def spatial_preview(pipe: Any, spec: JobSpec, published: LatentFormat | None) -> LatentPreview:
    """Previews of latents ``(batch, C, H/8, W/8)`` (Stable Diffusion, SDXL)."""
    channels = int(pipe.vae.config.latent_channels)
    params = spec.params
    return LatentPreview(format_for(published, channels), Layout(), params.width, params.height)


def packed_preview(pipe: Any, spec: JobSpec, published: LatentFormat | None) -> LatentPreview:
    """Previews of latents packed in 2x2 patches, ``(batch, H/16 · W/16, C · 4)`` (FLUX,
    Qwen-Image)."""
    vae = pipe.vae.config  # Qwen-Image's VAE names its latent channels z_dim
    channels = int(vae.get("latent_channels") or vae["z_dim"])
    patch = pipe.vae_scale_factor * 2
    params = spec.params
    layout = Layout("patches", params.height // patch, params.width // patch)
    return LatentPreview(format_for(published, channels), layout, params.width, params.height)


def load_with_variant(
    route: ModelRoute,
    dtype: torch.dtype,
    device: torch.device,
    base: tuple[Task, Any],
    variant: tuple[Task, Any],
) -> dict[Task, Pipeline]:
    """The common shape of a family's ``load``: a text-conditioned base pipeline with the route's
    LoRAs, and its image-conditioned variant on the same modules (``from_pipe``) when the route
    serves that task."""
    (base_task, base_cls), (variant_task, variant_cls) = base, variant
    pipe = base_cls.from_pretrained(route.weights, dtype=dtype).to(device)
    apply_loras(pipe, route.loras)
    pipelines: dict[Task, Pipeline] = {base_task: pipe}
    if variant_task in route.tasks:
        pipelines[variant_task] = variant_cls.from_pipe(pipe)
    return pipelines


def apply_loras(pipe: Any, loras: list[Lora]) -> None:
    """Load a route's LoRAs into a pipeline and weight them. Do it on the base pipeline before
    ``from_pipe``: the variants share its modules, so they get the LoRAs too."""
    if not loras:
        return
    for lora in loras:
        pipe.load_lora_weights(
            lora.weights, weight_name=lora.weight_name, adapter_name=lora.adapter_name
        )
    pipe.set_adapters(
        [lora.adapter_name for lora in loras], adapter_weights=[lora.scale for lora in loras]
    )


class _NoEmptyFloat32Warning(logging.Filter):
    """diffusers warns about "modules that should be kept in float32" on every dtype cast of a
    model, listing none when there are none (a quirk): ``from_pipe`` casts each module, and
    SDXL's image-to-image casts its VAE to float32 and back on every call."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "should be kept in float32: []" not in record.getMessage()


logging.getLogger("diffusers.models.modeling_utils").addFilter(_NoEmptyFloat32Warning())


# Catalogue family name -> module in this package (imported on first use).
MODULES: dict[str, str] = {
    "stable-diffusion": "stable_diffusion",
    "stable-diffusion-xl": "stable_diffusion_xl",
    "flux": "flux",
    "ltx-video": "ltx_video",
    "qwen-image": "qwen_image",
}


def family(name: str) -> Family:
    module: Family = importlib.import_module(f"{__name__}.{MODULES[name]}")
    return module
