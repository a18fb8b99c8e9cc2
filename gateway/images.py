"""Checks on uploaded images: a real, complete picture of sane size, before anything is queued."""

from __future__ import annotations

import io
import warnings

from PIL import Image, UnidentifiedImageError

from common.catalog import ModelRoute
from gateway.errors import field_error

ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")
MIN_SIDE_PX = 64


def inspect_image(data: bytes, *, field: str, max_pixels: int) -> tuple[int, int]:
    """Width and height of a fully decodable image, or a 4xx naming ``field``.

    The pixel count is checked from the header before any decoding, so a decompression bomb
    costs nothing; then the whole image is decoded so a truncated or corrupt file is caught here
    rather than on a GPU worker. Call it in a thread: decoding is CPU work.
    """
    if not data:
        raise field_error(field, "the uploaded file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise field_error(
                        field,
                        f"image is {width}x{height}; at most {max_pixels} pixels are accepted",
                        status_code=413,
                    )
                image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise field_error(field, "image dimensions are too large", status_code=413) from None
    except UnidentifiedImageError:
        raise field_error(
            field, f"not a recognised image; send one of {', '.join(ACCEPTED_FORMATS)}"
        ) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise field_error(field, f"the image is corrupt or truncated ({exc})") from None
    if min(width, height) < MIN_SIDE_PX:
        raise field_error(
            field, f"image is {width}x{height}; each side must be at least {MIN_SIDE_PX}px"
        )
    return width, height


def fit_to_route(width: int, height: int, route: ModelRoute) -> tuple[int, int]:
    """The render size for an input image: within the route's limits, aspect kept, sides rounded
    down to the size multiple the pipeline needs."""
    scale = min(1.0, route.max_width / width, route.max_height / height)
    step = route.size_multiple
    return (
        max(step, int(width * scale) // step * step),
        max(step, int(height * scale) // step * step),
    )
