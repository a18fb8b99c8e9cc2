"""Turning rendered pictures into the bytes clients download, and uploaded bytes into pictures.

Runs in a thread: encoding is CPU work that must not hold up the event loop or the GPU.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image

from gpu_worker.families import Artifact


@dataclass(frozen=True)
class Encoded:
    data: bytes
    content_type: str
    extension: str


def encode(artifact: Artifact) -> Encoded:
    if artifact.frames:
        # PyAV (FFmpeg) loads with the first video: a worker of image routes runs without it.
        from gpu_worker.video import encode_mp4

        return Encoded(encode_mp4(artifact.frames, artifact.fps), "video/mp4", "mp4")
    if artifact.image is None:
        raise ValueError("an artifact needs an image or frames")
    buffer = io.BytesIO()
    # Level 1: nearly the size of level 6 for generated images, at a fraction of the CPU time.
    artifact.image.save(buffer, format="PNG", compress_level=1)
    return Encoded(buffer.getvalue(), "image/png", "png")


def decode_image(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image
