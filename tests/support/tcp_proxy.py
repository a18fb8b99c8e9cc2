"""A loopback TCP proxy in front of a gateway that breaks connections on purpose, for tests of
clients that must survive it.

    with BreakingProxy(stack.base_url) as proxy:
        client = Client(proxy.base_url)
        proxy.drop_connections()              # every open connection is cut (a feed, say)
        proxy.drop_next_response("POST")      # the next POST is served; its answer is lost
        proxy.refuse_next("POST", 503)        # the next POST gets a 503 with Retry-After, unsent

Bytes pass through unchanged over real TCP. ``proxy.requests`` holds the head (request line and
headers) of every request seen, ``proxy.dropped`` every response swallowed. The proxy runs its own
event loop on a thread, so sync and async tests can both use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from dataclasses import dataclass, field
from types import TracebackType
from urllib.parse import urlsplit

_CHUNK_BYTES = 64 * 1024
_METHODS = (b"GET ", b"POST ", b"DELETE ", b"PUT ", b"HEAD ")


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
    return 0


async def _read_message(reader: asyncio.StreamReader, first: bytes) -> bytes:
    """One HTTP message with a Content-Length body, starting with bytes already read."""
    data = first
    while b"\r\n\r\n" not in data:
        data += await reader.read(_CHUNK_BYTES)
    head, _, body = data.partition(b"\r\n\r\n")
    while len(body) < _content_length(head):
        chunk = await reader.read(_CHUNK_BYTES)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


@dataclass
class BreakingProxy:
    target_url: str
    requests: list[str] = field(default_factory=list)
    dropped: list[bytes] = field(default_factory=list)
    _drop_next: str | None = None
    _refuse_next: tuple[str, int] | None = None
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)
    _loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)
    _port: int = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    def __enter__(self) -> BreakingProxy:
        started = threading.Event()

        def serve() -> None:
            asyncio.set_event_loop(self._loop)
            server = self._loop.run_until_complete(
                asyncio.start_server(self._connection, "127.0.0.1", 0)
            )
            self._port = server.sockets[0].getsockname()[1]
            started.set()
            self._loop.run_forever()
            server.close()

        self._thread = threading.Thread(target=serve, daemon=True)
        self._thread.start()
        started.wait(10)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.drop_connections()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def drop_connections(self) -> None:
        """Cut every connection open now, as a network failure would (RST, no goodbye)."""
        done = threading.Event()

        def cut() -> None:
            for writer in list(self._writers):
                writer.transport.abort()
            done.set()

        self._loop.call_soon_threadsafe(cut)
        done.wait(10)

    def drop_next_response(self, method: str) -> None:
        """The next request with ``method`` reaches the server; its response is swallowed and
        the client's connection cut."""
        self._drop_next = method

    def refuse_next(self, method: str, status: int, retry_after_s: int = 1) -> None:
        """The next request with ``method`` is answered by the proxy with ``status`` and
        ``Retry-After``, and never reaches the server."""
        self._refuse_next = (method, status)
        self._retry_after_s = retry_after_s

    async def _connection(
        self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter
    ) -> None:
        target = urlsplit(self.target_url)
        assert target.hostname is not None and target.port is not None
        self._writers.add(client_w)
        try:
            server_r, server_w = await asyncio.open_connection(target.hostname, target.port)
        except OSError:
            client_w.transport.abort()
            return
        drop = asyncio.Event()

        async def upstream() -> None:
            while chunk := await client_r.read(_CHUNK_BYTES):
                if chunk.startswith(_METHODS):
                    message = await _read_message(client_r, chunk)
                    head = message.partition(b"\r\n\r\n")[0].decode("latin-1")
                    self.requests.append(head)
                    method = head.split(" ", 1)[0]
                    if self._refuse_next and self._refuse_next[0] == method:
                        status = self._refuse_next[1]
                        self._refuse_next = None
                        body = b'{"error":"unavailable","message":"not now (proxy)"}'
                        client_w.write(
                            f"HTTP/1.1 {status} Refused\r\nContent-Type: application/json\r\n"
                            f"Retry-After: {self._retry_after_s}\r\nConnection: close\r\n"
                            f"Content-Length: {len(body)}\r\n\r\n".encode()
                            + body
                        )
                        await client_w.drain()
                        client_w.close()
                        return
                    if self._drop_next == method:
                        self._drop_next = None
                        drop.set()
                    chunk = message
                server_w.write(chunk)
                await server_w.drain()

        async def downstream() -> None:
            while chunk := await server_r.read(_CHUNK_BYTES):
                if drop.is_set():
                    self.dropped.append(await _read_message(server_r, chunk))
                    client_w.transport.abort()
                    return
                client_w.write(chunk)
                await client_w.drain()

        tasks = [asyncio.ensure_future(upstream()), asyncio.ensure_future(downstream())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(BaseException):
                    await task
            self._writers.discard(client_w)
            client_w.transport.abort()
            server_w.transport.abort()
