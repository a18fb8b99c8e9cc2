"""Latent previews: each family's latent2rgb map, the layouts that find one job's picture in a
step's latents (packed as the diffusers pipelines pack them), and the JPEG a client receives."""

from __future__ import annotations

import base64
import io

import pytest
import torch
from diffusers import FluxPipeline, LTXPipeline, QwenImagePipeline
from PIL import Image

from gpu_worker.families import flux, ltx_video, qwen_image, stable_diffusion, stable_diffusion_xl
from gpu_worker.previews import (
    PREVIEW_MAX_SIDE_PX,
    LatentFormat,
    LatentPreview,
    Layout,
    fallback_format,
    format_for,
    jpeg_data_uri,
    latent_to_rgb,
)

# Family -> its published factors' channel count.
PUBLISHED = {
    stable_diffusion: 4,
    stable_diffusion_xl: 4,
    flux: 16,
    qwen_image: 16,
    ltx_video: 128,
}


@pytest.mark.parametrize("module", list(PUBLISHED), ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_each_family_maps_its_latent_channels_to_rgb(module: object) -> None:
    published: LatentFormat | None = module.LATENT_FORMAT  # type: ignore[attr-defined]
    channels = PUBLISHED[module]  # type: ignore[index]
    assert published is not None
    assert published.channels == channels
    assert all(len(row) == 3 for row in published.factors) and len(published.bias) == 3
    fmt = format_for(published, channels)
    latents = torch.randn(channels, 12, 20, generator=torch.Generator().manual_seed(0)) * 3

    rgb = latent_to_rgb(latents, fmt)

    assert rgb.shape == (12, 20, 3) and rgb.dtype == torch.uint8
    assert int(rgb.max()) > int(rgb.min())  # a picture, not a flat colour
    # Zero latents are the bias colour; latents far out of range clamp to black or white.
    zero = latent_to_rgb(torch.zeros(channels, 1, 1), fmt)[0, 0].tolist()
    assert zero == [round((b + 1) * 127.5) for b in fmt.bias]
    huge = latent_to_rgb(torch.full((channels, 1, 1), 1e4), fmt)[0, 0].tolist()
    assert set(huge) <= {0, 255}


def test_sd15_factors_are_comfyui_s() -> None:
    # A latent of 1 in channel 0 only is that channel's row, mapped from [-1, 1] to 0-255.
    latents = torch.zeros(4, 1, 1)
    latents[0] = 1.0
    rgb = latent_to_rgb(latents, stable_diffusion.LATENT_FORMAT)[0, 0].tolist()
    assert rgb == [round((v + 1) * 127.5) for v in (0.3512, 0.2297, 0.3227)]


@pytest.mark.parametrize("channels", [1, 2, 3, 4, 8, 128])
def test_channel_counts_without_published_factors_get_a_deterministic_map(channels: int) -> None:
    fmt = fallback_format(channels)
    assert fmt.channels == channels and fmt == fallback_format(channels)
    latents = torch.zeros(channels, 1, 1)
    latents[0] = 2.0  # +2 sigma in the first channel: full red (and more, with fewer channels)
    r, g, b = latent_to_rgb(latents, fmt)[0, 0].tolist()
    assert r == 255
    assert (g, b) == {1: (255, 255), 2: (128, 255)}.get(channels, (128, 128))
    # A checkpoint with its family's channel count gets the published map, others the fallback.
    assert format_for(flux.LATENT_FORMAT, 16) is flux.LATENT_FORMAT
    assert format_for(flux.LATENT_FORMAT, channels) == fallback_format(channels)


def test_a_map_refuses_latents_of_another_channel_count() -> None:
    with pytest.raises(ValueError, match="4 latent channels"):
        latent_to_rgb(torch.zeros(4, 2, 2), fallback_format(16))


def batch_of(jobs: int, channels: int, *spatial: int) -> torch.Tensor:
    return torch.randn(jobs, channels, *spatial, generator=torch.Generator().manual_seed(1))


def test_spatial_latents_give_each_job_of_a_batch_its_own_picture() -> None:
    latents = batch_of(3, 4, 8, 6)
    layout = Layout()
    assert torch.equal(layout.grid(layout.take(latents, 1)), latents[1])
    video = batch_of(2, 4, 5, 8, 6)  # (batch, C, F, H, W): the first frame
    assert torch.equal(layout.grid(layout.take(video, 1)), video[1, :, 0])


@pytest.mark.parametrize("pipeline", [FluxPipeline, QwenImagePipeline])
def test_patches_packed_by_flux_and_qwen_image_unpack_to_the_latent_grid(pipeline: type) -> None:
    latents = batch_of(2, 16, 6, 10)  # a 6x10 latent grid: 3x5 patches of 2x2
    packed = pipeline._pack_latents(latents, 2, 16, 6, 10)  # type: ignore[attr-defined]
    layout = Layout("patches", 3, 5)
    assert torch.equal(layout.grid(layout.take(packed, 1)), latents[1])


def test_ltx_tokens_give_the_first_frame() -> None:
    latents = batch_of(2, 8, 3, 4, 5)  # (batch, C, frames, H, W)
    packed = LTXPipeline._pack_latents(latents)
    layout = Layout("tokens", 4, 5)
    taken = layout.take(packed, 1)
    assert taken.shape == (20, 8)  # only the first frame's tokens leave the device
    assert torch.equal(layout.grid(taken), latents[1, :, 0])


@pytest.mark.parametrize(("width", "height"), [(1024, 768), (512, 512), (96, 160), (2048, 64)])
def test_a_preview_is_a_jpeg_at_most_256_px_with_the_picture_s_aspect(
    width: int, height: int
) -> None:
    preview = LatentPreview(stable_diffusion.LATENT_FORMAT, Layout(), width, height)
    latents = batch_of(1, 4, height // 8, width // 8)

    uri = jpeg_data_uri(preview.image(preview.take(latents, 0)))

    assert uri.startswith("data:image/jpeg;base64,")
    image = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
    assert image.format == "JPEG" and image.mode == "RGB"
    assert max(image.size) == min(PREVIEW_MAX_SIDE_PX, max(width, height))
    assert abs(image.size[0] / image.size[1] - width / height) < 0.05 * width / height
