"""MP4 encoding: H.264 in yuv420p, index first, the requested rate, colours intact, clear errors."""

from __future__ import annotations

import io
import subprocess
import sys
from fractions import Fraction
from typing import NamedTuple

import av
import numpy as np
import pytest
from PIL import Image

from gpu_worker.encoding import encode
from gpu_worker.families import Artifact
from gpu_worker.video import encode_mp4
from tests.support.stack import REPO_ROOT


def clip(width: int, height: int, count: int) -> list[Image.Image]:
    """A gradient sliding sideways: smooth, like real video, and different on every frame."""
    x = np.arange(width)[None, :, None]
    y = np.arange(height)[:, None, None]
    channels = np.array([1, 2, 3])[None, None, :]
    return [
        Image.fromarray(((x * channels + y + 8 * i) % 256).astype(np.uint8)) for i in range(count)
    ]


class Decoded(NamedTuple):
    codec: str
    pix_fmt: str | None
    rate: Fraction | None
    frames: list[Image.Image]


def decode(data: bytes) -> Decoded:
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        frames = [frame.to_image() for frame in container.decode(stream)]
        context = stream.codec_context
        return Decoded(context.name, context.pix_fmt, stream.average_rate, frames)


def test_frames_come_back_as_h264_at_the_requested_size_and_rate() -> None:
    video = decode(encode_mp4(clip(96, 64, 17), fps=24))
    assert video.codec == "h264"
    assert video.pix_fmt == "yuv420p"
    assert video.rate == Fraction(24)
    assert len(video.frames) == 17
    assert {frame.size for frame in video.frames} == {(96, 64)}


def test_the_index_comes_before_the_media_data() -> None:
    # +faststart: a browser can start playing before the whole file has arrived.
    data = encode_mp4(clip(64, 64, 9), fps=8)
    assert data[4:8] == b"ftyp"
    assert 0 < data.index(b"moov") < data.index(b"mdat")


def test_colours_survive_the_round_trip() -> None:
    # Tagged BT.709 and converted with it: a decoder reading the tags gets the colour back.
    colour = (200, 30, 60)
    frames = decode(encode_mp4([Image.new("RGB", (64, 64), colour)] * 9, fps=8)).frames
    mean = np.asarray(frames[4], dtype=np.float64).reshape(-1, 3).mean(axis=0)
    np.testing.assert_allclose(mean, colour, atol=4)


def test_rgba_and_greyscale_frames_are_accepted() -> None:
    frames = [Image.new("RGBA", (64, 32), (0, 0, 255, 128)), Image.new("L", (64, 32), 128)]
    decoded = decode(encode_mp4(frames, fps=2)).frames
    assert [frame.size for frame in decoded] == [(64, 32)] * 2


@pytest.mark.parametrize("size", [(65, 64), (64, 33)])
def test_odd_sides_are_refused_clearly(size: tuple[int, int]) -> None:
    with pytest.raises(ValueError, match="even width and height"):
        encode_mp4([Image.new("RGB", size)], fps=24)


def test_frames_of_different_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="frame 1"):
        encode_mp4([Image.new("RGB", (64, 64)), Image.new("RGB", (32, 64))], fps=24)


@pytest.mark.parametrize(("frames", "fps"), [([], 24), ([Image.new("RGB", (64, 64))], 0)])
def test_an_empty_clip_or_no_rate_is_refused(frames: list[Image.Image], fps: int) -> None:
    with pytest.raises(ValueError):
        encode_mp4(frames, fps)


def test_encode_turns_a_video_artifact_into_mp4_and_a_still_into_png() -> None:
    video = encode(Artifact(frames=clip(64, 64, 9), fps=12))
    assert (video.content_type, video.extension) == ("video/mp4", "mp4")
    decoded = decode(video.data)
    assert len(decoded.frames) == 9 and decoded.rate == 12
    still = encode(Artifact(image=Image.new("RGB", (8, 8))))
    assert (still.content_type, still.extension) == ("image/png", "png")


def test_a_worker_of_image_routes_runs_without_pyav() -> None:
    """PyAV (FFmpeg) loads with the first video, so an install without it serves images."""
    script = """
import sys
sys.modules["av"] = None  # import av now fails, as where PyAV is not installed
from PIL import Image
import gpu_worker.main
from gpu_worker.encoding import encode
from gpu_worker.families import Artifact
encoded = encode(Artifact(image=Image.new("RGB", (8, 8))))
assert encoded.content_type == "image/png", encoded.content_type
try:
    encode(Artifact(frames=[Image.new("RGB", (8, 8))], fps=8))
except ImportError:
    print("video needs PyAV")
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO_ROOT, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "video needs PyAV"
