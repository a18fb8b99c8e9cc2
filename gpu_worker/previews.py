"""Live previews of a render: a step's latents mapped to RGB by a fixed per-family linear map
("latent2rgb", as ComfyUI's ``comfy/latent_formats.py``), JPEG-encoded and published.

The split keeps the device from ever waiting for a preview:

- on the render thread (the diffusers step callback), ``JobPreviews.offer`` checks the job's
  interval first (a float comparison), then takes one job's slice of the batch's latents (a view)
  and starts a non-blocking copy off the device (``.to("cpu", non_blocking=True)`` plus a CUDA
  event; a detached clone elsewhere);
- on the previews thread: wait for that copy, unpack, map, resize, JPEG;
- on the event loop: ``PreviewStore.publish`` (the latest only, expiring; pub/sub).

A job has at most one preview in flight: a slow encoder or Redis skips previews, never queues
them.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import time
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Literal

import torch
from PIL import Image

from common.logging import get_logger
from common.previews import Preview, PreviewStore
from common.redis_errors import REDIS_TRANSIENT

log = get_logger(__name__)

PREVIEW_MIN_INTERVAL_S = 0.5
PREVIEW_MAX_SIDE_PX = 256
PREVIEW_JPEG_QUALITY = 80
# The map for latents without published factors: the first three channels, a latent of ±2
# (two standard deviations of a normalised latent) at full scale.
FALLBACK_GAIN = 0.5

RGB = tuple[float, float, float]


@dataclass(frozen=True)
class LatentFormat:
    """``rgb = latent · factors + bias`` per latent pixel, then clamped to [-1, 1]; one row of
    ``factors`` per latent channel, columns R, G, B."""

    factors: tuple[RGB, ...]
    bias: RGB = (0.0, 0.0, 0.0)

    @property
    def channels(self) -> int:
        return len(self.factors)


def fallback_format(channels: int) -> LatentFormat:
    """A deterministic map for a channel count nothing is published for (the tiny checkpoints):
    channels 0, 1, 2 as R, G, B; with fewer than three, they repeat (one channel: grey)."""
    if channels < 1:
        raise ValueError("latents need at least one channel")
    rows = [[0.0, 0.0, 0.0] for _ in range(channels)]
    for colour in range(3):
        rows[colour % channels][colour] = FALLBACK_GAIN
    return LatentFormat(tuple((r[0], r[1], r[2]) for r in rows))


def format_for(published: LatentFormat | None, channels: int) -> LatentFormat:
    """The family's published factors when its latents have their channel count, else the
    fallback: a tiny checkpoint with production's channel count gets production's map."""
    if published is not None and published.channels == channels:
        return published
    return fallback_format(channels)


@dataclass(frozen=True)
class Layout:
    """Where one job's picture is in the latents a pipeline's step callback sees.

    - ``spatial``: ``(batch, C, H, W)``; ``(batch, C, F, H, W)`` for video (first frame);
    - ``patches``: ``(batch, H/2 · W/2, C · 4)``, 2x2 patches packed as FLUX and Qwen-Image do;
    - ``tokens``: ``(batch, F · H · W, C)``, LTX-Video's packing with patch size 1, frame-major
      (the first frame is the first ``H · W`` tokens).

    ``height``/``width``: the latent grid (for ``patches``, in patches).
    """

    kind: Literal["spatial", "patches", "tokens"] = "spatial"
    height: int = 0
    width: int = 0

    def take(self, latents: torch.Tensor, index: int) -> torch.Tensor:
        """On the render thread: job ``index``'s picture, as a view (nothing is computed)."""
        one = latents[index]
        if self.kind == "spatial":
            return one[:, 0] if one.dim() == 4 else one
        if self.kind == "tokens":
            return one[: self.height * self.width]
        return one

    def grid(self, taken: torch.Tensor) -> torch.Tensor:
        """Off the render thread: ``take``'s result as ``(C, H, W)``."""
        if self.kind == "spatial":
            return taken
        if self.kind == "tokens":
            return taken.T.reshape(-1, self.height, self.width)
        h, w = self.height, self.width
        channels = taken.shape[-1] // 4
        return (
            taken.reshape(h, w, channels, 2, 2)
            .permute(2, 0, 3, 1, 4)
            .reshape(channels, 2 * h, 2 * w)
        )


@dataclass(frozen=True)
class LatentPreview:
    """How to make one render's previews: its latents' layout and RGB map, and the size of the
    picture being rendered (the preview keeps its aspect ratio)."""

    format: LatentFormat
    layout: Layout
    width: int
    height: int

    def take(self, latents: torch.Tensor, index: int) -> torch.Tensor:
        return self.layout.take(latents, index)

    def image(self, taken: torch.Tensor) -> Image.Image:
        """Off the render thread: the RGB picture, longest side at most 256 px."""
        return to_image(latent_to_rgb(self.layout.grid(taken), self.format), self.size)

    @property
    def size(self) -> tuple[int, int]:
        scale = min(1.0, PREVIEW_MAX_SIDE_PX / max(self.width, self.height))
        return max(1, round(self.width * scale)), max(1, round(self.height * scale))


def latent_to_rgb(latents: torch.Tensor, fmt: LatentFormat) -> torch.Tensor:
    """``(C, H, W)`` latents to ``(H, W, 3)`` uint8."""
    if latents.shape[0] != fmt.channels:
        raise ValueError(f"{latents.shape[0]} latent channels, the map has {fmt.channels}")
    factors = torch.tensor(fmt.factors, dtype=torch.float32)
    bias = torch.tensor(fmt.bias, dtype=torch.float32)
    rgb = torch.einsum("chw,cr->hwr", latents.float(), factors) + bias
    return ((rgb.clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)


def to_image(rgb: torch.Tensor, size: tuple[int, int]) -> Image.Image:
    image = Image.fromarray(rgb.numpy())  # (H, W, 3) uint8: RGB
    return image.resize(size, Image.Resampling.BILINEAR) if image.size != size else image


def jpeg_data_uri(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=PREVIEW_JPEG_QUALITY)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


@dataclass(frozen=True)
class _Copy:
    """Latents on their way off the device; ``ready`` is set once the copy has landed."""

    tensor: torch.Tensor
    ready: torch.cuda.Event | None

    def wait(self) -> torch.Tensor:
        if self.ready is not None:
            self.ready.synchronize()
        return self.tensor


def copy_off_device(taken: torch.Tensor) -> _Copy:
    """Start copying ``taken`` to the CPU without making the render thread wait for it."""
    if taken.is_cuda:
        # Into pinned memory, queued on the render's stream: the copy reads the latents as of
        # this step whatever the next kernels do, and the render thread goes straight on.
        copied = taken.detach().to("cpu", non_blocking=True)
        ready = torch.cuda.Event()  # type: ignore[no-untyped-call]  # torch: no hints
        ready.record()
        return _Copy(copied, ready)
    return _Copy(taken.detach().clone(), None)


class JobPreviews:
    """One job's previews: offered on every step, made at most every ``min_interval_s``."""

    def __init__(
        self,
        store: PreviewStore,
        job_id: str,
        executor: Executor,
        *,
        min_interval_s: float = PREVIEW_MIN_INTERVAL_S,
    ) -> None:
        self._store = store
        self._job_id = job_id
        self._executor = executor
        self._min_interval_s = min_interval_s
        self._loop = asyncio.get_running_loop()
        self._next_at = 0.0
        self._busy = False  # a preview in flight: the next is skipped, never queued
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.published = 0

    def offer(
        self, done: int, total: int, latents: torch.Tensor, index: int, preview: LatentPreview
    ) -> None:
        """On the render thread, after step ``done``: a preview if one is due."""
        now = time.monotonic()
        if self._busy or now < self._next_at or self._closed:
            return
        self._busy, self._next_at = True, now + self._min_interval_s
        copy = copy_off_device(preview.take(latents, index))
        self._loop.call_soon_threadsafe(self._start, done, total, copy, preview)

    def _start(self, done: int, total: int, copy: _Copy, preview: LatentPreview) -> None:
        if self._closed:
            self._busy = False
            return
        self._task = asyncio.create_task(self._make(done, total, copy, preview))

    async def _make(self, done: int, total: int, copy: _Copy, preview: LatentPreview) -> None:
        try:
            uri = await self._loop.run_in_executor(self._executor, _encode, copy, preview)
            await self._store.publish(
                self._job_id, Preview(step=done, total_steps=total, image=uri)
            )
            self.published += 1
        except REDIS_TRANSIENT:
            pass  # best effort: the next one may get through
        except Exception:  # a layout that does not fit these latents: no previews, no failure
            log.exception("preview.failed", job_id=self._job_id, step=done)
            self._closed = True
        finally:
            self._busy = False

    async def close(self) -> None:
        """The render is over: wait for the preview in flight, then drop the latest one."""
        self._closed = True
        if self._task is not None:
            await self._task
        with contextlib.suppress(*REDIS_TRANSIENT):
            await self._store.clear(self._job_id)


def _encode(copy: _Copy, preview: LatentPreview) -> str:
    return jpeg_data_uri(preview.image(copy.wait()))
