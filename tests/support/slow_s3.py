"""A loopback HTTP proxy in front of an S3 server that can hold chosen requests, for tests.

Point a service's ``S3_ENDPOINT_URL`` at ``proxy.endpoint_url``; requests and responses pass
through byte for byte over real TCP (the Host header is kept, so SigV4 signatures stay valid).
``proxy.stall("some-key")`` holds the next request whose path contains that text until the test
releases it (or ``hold_s`` passes), so one upload can hang while the others go on:

    with SlowS3Proxy(s3_server.endpoint_url) as proxy:
        stall = proxy.stall(job_id)      # or "generations/": the next result PUT, whatever its key
        ...
        stall.wait_held(timeout_s=60)    # the uploader's PUT is stuck here now
        stall.release()

The proxy runs its own event loop on a thread, so sync and async tests can both use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import urlsplit

from tests.support.waiting import async_wait_for

_CHUNK_BYTES = 64 * 1024
T = TypeVar("T")


@dataclass
class Stall:
    """One request to hold: the first whose method matches and whose path contains ``match``."""

    match: str
    method: str
    hold_s: float | None
    _loop: asyncio.AbstractEventLoop = field(repr=False)
    # Set (from the proxy's thread) once a matching request is being held; ``path`` is its path.
    held: threading.Event = field(default_factory=threading.Event)
    path: str | None = None
    _released: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    def matches(self, method: str, path: str) -> bool:
        return method == self.method and self.match in path

    def release(self) -> None:
        """Let the held request (or the next matching one) through."""
        self._loop.call_soon_threadsafe(self._released.set)

    def wait_held(self, timeout_s: float) -> str:
        """Block until a matching request is held; returns its path."""
        if not self.held.wait(timeout_s):
            raise TimeoutError(f"no {self.method} matching {self.match!r} within {timeout_s}s")
        assert self.path is not None
        return self.path

    async def await_held(self, timeout_s: float) -> str:
        """``wait_held`` for async tests: the caller's event loop keeps running."""

        async def is_held() -> bool:
            return self.held.is_set()

        await async_wait_for(is_held, timeout_s=timeout_s, what=f"a held {self.method}")
        assert self.path is not None
        return self.path

    async def _hold(self, path: str) -> None:
        self.path = path
        self.held.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._released.wait(), timeout=self.hold_s)


class SlowS3Proxy:
    """Forwards ``127.0.0.1:<port>`` to ``upstream_url``, holding the requests it is told to."""

    def __init__(self, upstream_url: str) -> None:
        upstream = urlsplit(upstream_url)
        assert upstream.hostname is not None and upstream.port is not None, upstream_url
        self._upstream = (upstream.hostname, upstream.port)
        self._stalls: list[Stall] = []
        self._connections: set[asyncio.Task[None]] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="slow-s3", daemon=True)
        self._thread.start()
        self._server = self._call(asyncio.start_server(self._serve, "127.0.0.1", 0))
        self.port: int = self._server.sockets[0].getsockname()[1]

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stall(self, match: str, *, method: str = "PUT", hold_s: float | None = None) -> Stall:
        """Hold the next ``method`` request whose path contains ``match`` until released, or
        for ``hold_s`` seconds. Requests after it, and all others, pass at once."""

        async def add() -> Stall:
            stall = Stall(match=match, method=method, hold_s=hold_s, _loop=self._loop)
            self._stalls.append(stall)
            return stall

        return self._call(add())

    def close(self) -> None:
        """Release every stall, drop every connection and stop the thread."""
        if self._loop.is_closed():
            return
        self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def __enter__(self) -> SlowS3Proxy:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the proxy's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)

    async def _shutdown(self) -> None:
        for stall in self._stalls:
            stall._released.set()
        self._server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            upstream_r, upstream_w = await asyncio.open_connection(*self._upstream)
        except OSError:
            client_w.close()
            self._connections.discard(task)
            return
        responses = asyncio.create_task(_pump(upstream_r, client_w))
        try:
            await self._forward_requests(client_r, upstream_w)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # either side hung up
        finally:
            upstream_w.close()
            with contextlib.suppress(Exception):
                await responses
            client_w.close()
            self._connections.discard(task)

    async def _forward_requests(
        self, client_r: asyncio.StreamReader, upstream_w: asyncio.StreamWriter
    ) -> None:
        """Request by request (a kept-alive connection carries many): hold it if a stall
        matches, then forward its head and body."""
        while True:
            try:
                head = await client_r.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                return  # the client closed the connection between requests
            request_line, *header_lines = head.decode("latin-1").split("\r\n")
            method, path, _ = request_line.split(" ", 2)
            headers = {
                name.strip().lower(): value.strip()
                for name, _, value in (line.partition(":") for line in header_lines if line)
            }
            stall = next((s for s in self._stalls if s.matches(method, path)), None)
            if stall is not None:
                self._stalls.remove(stall)
                await stall._hold(path)
            upstream_w.write(head)
            if "chunked" in headers.get("transfer-encoding", ""):
                await _forward_chunked(client_r, upstream_w)
            else:
                remaining = int(headers.get("content-length", "0"))
                while remaining:
                    data = await client_r.readexactly(min(remaining, _CHUNK_BYTES))
                    upstream_w.write(data)
                    remaining -= len(data)
            await upstream_w.drain()


async def _forward_chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while True:
        size_line = await reader.readuntil(b"\r\n")
        writer.write(size_line)
        size = int(size_line.split(b";")[0], 16)
        if size == 0:  # trailers, then the blank line that ends the message
            while (line := await reader.readuntil(b"\r\n")) != b"\r\n":
                writer.write(line)
            writer.write(b"\r\n")
            return
        writer.write(await reader.readexactly(size + 2))  # the chunk and its CRLF


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Responses, byte for byte, until the upstream closes."""
    try:
        while data := await reader.read(_CHUNK_BYTES):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()
