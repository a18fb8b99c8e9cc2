"""A finished job's result bytes, for answers that carry the image itself (``b64_json``).

Nothing large goes through Redis: with local storage the file is read from ``output_dir`` (the
result URL is ``<public_base_url>/output/<key>``, the key a path under it); with S3 the result URL
(presigned, or public) is fetched over HTTP, as any client would. Both in a thread.
"""

from __future__ import annotations

import asyncio
import urllib.request
from pathlib import Path
from urllib.parse import unquote

from gateway.errors import ApiError

FETCH_TIMEOUT_S = 30.0
# A result larger than this is not inlined: ask for url instead.
MAX_RESULT_BYTES = 64 * 1024 * 1024


class ResultReader:
    def __init__(self, *, output_dir: Path | None, public_base_url: str) -> None:
        """``output_dir``: with local storage, where results are; ``None`` with S3."""
        self._output_dir = output_dir.resolve() if output_dir is not None else None
        self._local_prefix = public_base_url.rstrip("/") + "/output/"

    async def read(self, url: str) -> bytes:
        return await asyncio.to_thread(self._read, url)

    def _read(self, url: str) -> bytes:
        if self._output_dir is not None and url.startswith(self._local_prefix):
            path = (self._output_dir / unquote(url[len(self._local_prefix) :])).resolve()
            if not path.is_relative_to(self._output_dir) or not path.is_file():
                raise _gone(url)
            return path.read_bytes()
        try:
            with urllib.request.urlopen(url, timeout=FETCH_TIMEOUT_S) as answer:  # noqa: S310
                data: bytes = answer.read(MAX_RESULT_BYTES + 1)
        except OSError:
            raise _gone(url) from None
        if len(data) > MAX_RESULT_BYTES:
            raise ApiError(
                500,
                "result_too_large",
                f"A result is larger than {MAX_RESULT_BYTES} bytes; ask for response_format=url.",
            )
        return data


def _gone(url: str) -> ApiError:
    return ApiError(
        500,
        "result_unreadable",
        f"The result {url} could not be read back from storage; ask for response_format=url "
        "or retry.",
    )
